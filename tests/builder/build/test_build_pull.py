"""``--pull``: a base image that changed in the registry is used; without it the local
copy is used and the progress says which one and how old it is. Pulls and pushes show
the bytes of each blob, and blobs the registry already had count as reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.registries import pybuild_registry

from .conftest import write_base_layout

pytestmark = pytest.mark.slow


def _cli(*args: str, storage: Path, fast_path: bool = False,
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYBUILD_STORAGE": str(storage)}
    env.pop("PYBUILD_NO_FASTPATH", None)
    env["PYBUILD_FASTPATH_DEBUG" if fast_path else "PYBUILD_NO_FASTPATH"] = "1"
    return subprocess.run([sys.executable, "-m", "builder", *args], check=False,
                          capture_output=True, text=True, env=env, timeout=300)


def _layout(root: Path, marker: str) -> str:
    """A one-layer image whose /marker says ``marker``, as an OCI layout."""
    rootfs = root / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "marker").write_text(marker)
    write_base_layout(rootfs, root / "layout")
    return str(root / "layout")


def _built_marker(ref: str, tmp: Path, storage: Path, *flags: str) -> tuple[str, str]:
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM {ref}\nLABEL checked=yes\n")
    out = tmp / f"out-{len(list(tmp.glob('out-*')))}"
    built = _cli("build", "--progress", "plain", "--output", f"type=local,dest={out}",
                 *flags, str(ctx), storage=storage)
    assert built.returncode == 0, built.stderr
    return (out / "marker").read_text(), built.stderr


def test_pull_uses_the_base_that_changed_in_the_registry(tmp_path: Path) -> None:
    v1, v2 = _layout(tmp_path / "v1", "one"), _layout(tmp_path / "v2", "two")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/base", "1")
        pushed = _cli("copy", f"oci:{v1}:latest", base, storage=tmp_path / "seed")
        assert pushed.returncode == 0, pushed.stderr
        marker, log = _built_marker(base, tmp_path, storage)
        assert marker == "one"
        assert "pulling " + base in log and "pulled" in log  # absent: pulled, per blob

        pushed = _cli("copy", f"oci:{v2}:latest", base, storage=tmp_path / "seed")
        assert pushed.returncode == 0, pushed.stderr
        local = json.loads(_cli("images", "--json", storage=storage).stdout)
        assert local, _cli("images", "--json", storage=storage)

        # without --pull: the local copy, named with its digest and age
        marker, log = _built_marker(base, tmp_path, storage)
        assert marker == "one", log
        used = next(i for i in local if i["ref"] == base)
        line = next(x for x in log.splitlines() if x.startswith("using local image"))
        assert base in line and used["digest"] in line and "ago" in line
        assert "--pull" in line

        # --pull: the registry's new manifest, and the new base is used
        marker, log = _built_marker(base, tmp_path, storage, "--pull")
        assert marker == "two"
        assert "using local image" not in log
        assert "pulling " + base in log

        # --pull again, nothing changed: the manifest is read, no blob fetched again
        marker, log = _built_marker(base, tmp_path, storage, "--pull")
        assert marker == "two"
        assert f"{base}: 0 B transferred, " in log and " B reused" in log

        # and it is now the local copy
        marker, _ = _built_marker(base, tmp_path, storage)
        assert marker == "two"


def test_json_progress_names_the_local_base(tmp_path: Path) -> None:
    v1 = _layout(tmp_path / "v1", "one")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/base", "1")
        assert _cli("copy", f"oci:{v1}:latest", base, storage=storage).returncode == 0
        # pybuild copy stored nothing locally; pull it, then build from it
        assert _cli("pull", base, storage=storage).returncode == 0
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nLABEL a=b\n")
        built = _cli("build", "--progress", "json", str(ctx), storage=storage)
        assert built.returncode == 0, built.stderr
        events = [json.loads(x) for x in built.stderr.splitlines() if x.startswith("{")]
        bases = [e for e in events if e["event"] == "base"]
        assert len(bases) == 1 and bases[0]["ref"] == base
        assert bases[0]["digest"].startswith("sha256:")
        assert 0 <= bases[0]["age_seconds"] < 300 and bases[0]["pulled"].endswith("Z")


def test_push_counts_blobs_the_registry_has_as_reused(tmp_path: Path) -> None:
    v1 = _layout(tmp_path / "v1", "one")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/base", "1")
        assert _cli("copy", f"oci:{v1}:latest", f"local:{base}", storage=storage).returncode == 0
        first = _cli("push", "--json", base, storage=storage)
        again = _cli("push", "--json", base, storage=storage)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    events = [json.loads(x) for x in first.stdout.splitlines()]
    size = sum(e["total"] for e in events if e["event"] == "start")
    assert size > 0
    summary = next(json.loads(x) for x in again.stdout.splitlines() if '"summary"' in x)
    assert summary["transferred"] == 0
    assert summary["reused"] == size  # the config and the layer, whole
    done = [json.loads(x) for x in again.stdout.splitlines() if '"done"' in x]
    assert {e["status"] for e in done} == {"exists"} and len(done) == 2


def test_build_push_shows_bytes_per_blob(tmp_path: Path) -> None:
    v1 = _layout(tmp_path / "v1", "one")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM oci-layout://{v1}:latest\nCOPY f /f\n")
        (ctx / "f").write_text("x" * 1000)
        target = registry.ref("test/app", "1")
        built = _cli("build", "--progress", "json", "-t", target, "--push", str(ctx),
                     storage=storage)
    assert built.returncode == 0, built.stderr
    events = [json.loads(x) for x in built.stderr.splitlines() if x.startswith("{")]
    push_step = next(e["step"] for e in events
                     if e["event"] == "start" and e["name"].startswith("pushing "))
    ends = [e for e in events if e["event"] == "transfer" and e["step"] == push_step
            and e["status"]]
    assert len(ends) == 3  # two layers and the config
    assert all(e["status"] == "pushed" and e["done"] == e["total"] > 0 for e in ends)


def test_pull_from_a_registry_that_is_gone_fails_with_one_line(tmp_path: Path) -> None:
    v1 = _layout(tmp_path / "v1", "one")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/base", "1")
        assert _cli("copy", f"oci:{v1}:latest", base, storage=tmp_path / "seed").returncode == 0
        assert _built_marker(base, tmp_path, storage)[0] == "one"
    # the registry is stopped: the local copy still builds, --pull does not fall back to
    # it (as docker build --pull)
    assert _built_marker(base, tmp_path, storage)[0] == "one"
    ctx = tmp_path / "ctx"
    failed = _cli("build", "--pull", "--progress", "plain", str(ctx), storage=storage)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    errors = [x for x in failed.stderr.splitlines() if x.startswith("ERROR: ")]
    assert len(errors) == 1 and f"pulling {base}" in errors[0], failed.stderr
    assert f"ERROR: pulling {base} failed" in failed.stderr  # the step, not DONE


def test_fast_path_replays_the_local_base_line(tmp_path: Path) -> None:
    v1 = _layout(tmp_path / "v1", "one")
    storage = tmp_path / "storage"
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/base", "1")
        assert _cli("copy", f"oci:{v1}:latest", base, storage=tmp_path / "seed").returncode == 0
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nLABEL a=b\n")
        logs = []
        for _ in range(3):
            built = _cli("build", "--progress", "plain", "-t", "app:1", str(ctx),
                         storage=storage, fast_path=True)
            assert built.returncode == 0, built.stderr
            logs.append(built.stderr)
    # the first build pulled (a build that pulled is not replayed: it would not say
    # which local image the next one uses); the second says it; the third, a replay, too
    assert "pulling " in logs[0] and "using local image" not in logs[0]
    assert "fastpath: hit" not in logs[1] and f"using local image {base}" in logs[1]
    assert "fastpath: hit" in logs[2] and f"using local image {base}" in logs[2]


async def test_a_base_image_registry_that_never_answers_is_reported_in_the_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As `pybuild pull` says "waiting for HOST" while a registry takes the connection and
    # answers nothing, so does the build's step that pulls its base image.
    import dataclasses
    import io
    import socket

    import builder.base as base
    from builder.progress import BuildProgress
    from cas import StoreConfig
    from cas.open import open_store

    real = base.client_options

    def quick(notice=None):  # type: ignore[no-untyped-def]
        return dataclasses.replace(real(notice), retries=1, backoff=0.01, read_timeout=0.6,
                                   notice_after=0.25)

    monkeypatch.setattr(base, "client_options", quick)
    out = io.StringIO()
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(16)
            host = f"127.0.0.1:{server.getsockname()[1]}"
            with pytest.raises(base.BaseImageError, match=f"pulling {host}/x:1: .*timed out"):
                await base.pull_base(f"{host}/x:1", store, progress=BuildProgress("json", out))
    finally:
        await store.close()
    logs = [e["line"] for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "log"]
    assert any(line.startswith(f"waiting for {host} (no answer for ") for line in logs), logs
    assert f"waiting for {host} (no answer in 0.6 s; retrying, attempt 2 of 2)" in logs
