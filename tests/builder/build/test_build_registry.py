"""Registry round trip: push the busybox base to ``pybuild serve``, build FROM it by
reference (pulled into the local store), ``-t`` + ``--push`` the result, pull it back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit.registries import pybuild_registry

pytestmark = pytest.mark.slow


def _cli(*args: str, storage: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYBUILD_STORAGE": str(storage)}
    return subprocess.run(["python3", "-m", "builder", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_from_registry_tag_and_push(context_of, busybox_ref: str, tmp_path: Path) -> None:
    layout = busybox_ref[len("oci-layout://"):].rsplit(":", 1)[0]
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/busybox", "1")
        pushed = _cli("copy", f"oci:{layout}:latest", base, storage=tmp_path / "seed")
        assert pushed.returncode == 0, pushed.stderr
        storage = tmp_path / "storage"
        target = registry.ref("test/built", "v1")
        built = _cli("build", "--progress", "plain", "--build-arg", f"IMAGE={base}",
                     "-t", target, "--push", str(context_of("registry")), storage=storage)
        assert built.returncode == 0, built.stderr
        digest = built.stdout.strip()
        images = _cli("images", storage=storage)
        assert "test/built" in images.stdout, images.stdout + images.stderr
        fresh = tmp_path / "fresh"
        pulled = _cli("pull", target, storage=fresh)
        assert pulled.returncode == 0, pulled.stderr
        out = tmp_path / "oci-out"
        copied = _cli("copy", f"local:{target}", f"oci:{out}:v1", storage=fresh)
        assert copied.returncode == 0, copied.stderr
        assert digest.split(":")[1] in {p.name for p in (out / "blobs/sha256").iterdir()}
