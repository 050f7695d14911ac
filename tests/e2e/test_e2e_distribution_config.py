"""One CNCF Distribution ``config.yml`` runs both registries: Debian's ``docker-registry``
and ``pybuild serve --config``, with the same storage layout keys, htpasswd auth, deletes
and response headers; skopeo pushes, pulls and deletes through each alike."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import bcrypt
import pytest

from testkit.clients import run, skopeo
from testkit.images import Image, read_oci_layout
from testkit.registries import RegistryProcess, distribution_config, http
from testkit.tools import require_tool


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.mark.parametrize("kind", ["distribution", "pybuild"])
def test_the_same_distribution_config_serves_alike(kind: str, htpasswd: Path, busybox: Image,
                                                   busybox_layout: Path, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    config = tmp_path / "config.yml"

    def argv(addr: str) -> list[str]:
        config.write_text(distribution_config(storage, addr, htpasswd))
        if kind == "distribution":
            return [require_tool("docker-registry"), "serve", str(config)]
        return [sys.executable, "-m", "builder", "serve", "--config", str(config)]

    creds = base64.b64encode(b"alice:wonderland").decode()
    with RegistryProcess(kind, argv, storage=storage, log=tmp_path / "log") as registry:
        ref = registry.ref("team/busybox", "v1")
        denied = http(registry.addr, "GET", "/v2/")
        assert denied.status == 401
        assert denied.headers["www-authenticate"] == 'Basic realm="basic-realm"'
        assert denied.headers["x-content-type-options"] == "nosniff"
        run(skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
                   f"oci:{busybox_layout}:latest", f"docker://{ref}"))
        out = tmp_path / "pulled"
        run(skopeo("copy", "--src-tls-verify=false", "--src-creds", "alice:wonderland",
                   f"docker://{ref}", f"oci:{out}:v1"))
        assert read_oci_layout(out, "v1").manifest_digest == busybox.manifest_digest
        auth = {"Authorization": f"Basic {creds}"}
        ok = http(registry.addr, "GET", "/v2/", headers=auth)
        assert ok.status == 200 and ok.headers["x-content-type-options"] == "nosniff"
        gone = http(registry.addr, "DELETE", f"/v2/team/busybox/manifests/{busybox.manifest_digest}",
                    headers=auth)
        assert gone.status == 202  # storage.delete.enabled: true
        assert http(registry.addr, "GET", f"/v2/team/busybox/manifests/{busybox.manifest_digest}",
                    headers=auth).status == 404
    # rootdirectory is where each kept its data
    assert storage.is_dir() and any(storage.iterdir())


@pytest.mark.parametrize("kind", ["distribution", "pybuild"])
def test_cors_preflights_are_answered_alike(kind: str, busybox: Image, busybox_layout: Path,
                                            tmp_path: Path) -> None:
    # A registry UI in a browser, allowed by CORS headers in http.headers, asks OPTIONS
    # before it deletes (or sends Authorization, or a long Accept) from another origin.
    storage = tmp_path / "storage"
    config = tmp_path / "config.yml"

    def argv(addr: str) -> list[str]:
        config.write_text(distribution_config(storage, addr)
                          + "    Access-Control-Allow-Origin: ['*']\n"
                          + "    Access-Control-Allow-Methods: [HEAD, GET, OPTIONS, DELETE]\n")
        if kind == "distribution":
            return [require_tool("docker-registry"), "serve", str(config)]
        return [sys.executable, "-m", "builder", "serve", "--config", str(config)]

    with RegistryProcess(kind, argv, storage=storage, log=tmp_path / "log") as registry:
        run(skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:latest",
                   f"docker://{registry.ref('ui/busybox', 'v1')}"))
        preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "DELETE",
                     "Access-Control-Request-Headers": "accept"}
        manifest = f"/v2/ui/busybox/manifests/{busybox.manifest_digest}"
        for path in ("/v2/", "/v2/_catalog", "/v2/ui/busybox/tags/list", manifest):
            resp = http(registry.addr, "OPTIONS", path, headers=preflight)
            assert resp.status == 200, (path, resp.body)
            assert resp.headers["access-control-allow-origin"] == "*"
        allowed = http(registry.addr, "OPTIONS", manifest, headers=preflight).headers["allow"]
        assert {m.strip() for m in allowed.split(",")} == {"GET", "HEAD", "PUT", "DELETE"}
        assert http(registry.addr, "DELETE", manifest, headers={"Origin": "http://ui.example"}).status == 202


def _status_becomes(addr: str, status: int, seconds: float = 15) -> int:
    deadline = time.monotonic() + seconds
    while True:
        got = http(addr, "GET", "/v2/").status
        if got == status or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["distribution", "pybuild"])
def test_registry_variables_and_health_file_act_alike(kind: str, tmp_path: Path) -> None:
    # REGISTRY_* variables override the file (here: deletes off although the file says on),
    # and health.file answers 503 to everything while the file exists.
    storage = tmp_path / "storage"
    config = tmp_path / "config.yml"
    down = tmp_path / "down"

    def argv(addr: str) -> list[str]:
        config.write_text(distribution_config(storage, addr)
                          + f"health:\n  file:\n    - file: {down}\n      interval: 1s\n")
        if kind == "distribution":
            return [require_tool("docker-registry"), "serve", str(config)]
        return [sys.executable, "-m", "builder", "serve", "--config", str(config)]

    env = {**os.environ, "REGISTRY_STORAGE_DELETE_ENABLED": "false"}
    with RegistryProcess(kind, argv, storage=storage, log=tmp_path / "log", env=env) as registry:
        gone = http(registry.addr, "DELETE", "/v2/lib/app/manifests/sha256:" + "0" * 64)
        assert gone.status == 405 and json.loads(gone.body)["errors"][0]["code"] == "UNSUPPORTED"
        down.touch()
        assert _status_becomes(registry.addr, 503) == 503
        out = http(registry.addr, "GET", "/v2/_catalog")
        assert out.status == 503 and json.loads(out.body)["errors"][0]["code"] == "UNAVAILABLE"
        down.unlink()
        assert _status_becomes(registry.addr, 200) == 200
