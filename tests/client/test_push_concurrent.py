"""Two ``pybuild push`` processes pushing one image from one storage directory at once
(two CI jobs publishing the same build): a push records its upload session in
``images.db`` so that a later run can resume it, and the other push may take it up and
finish it meanwhile. Both succeed, as two ``skopeo copy`` processes do."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from testkit import registries

from .helpers import make_image, random_bytes, seed_store
from .test_piece_push import versions

ROOT = Path(__file__).resolve().parents[2]

# `pybuild push --storage STORAGE REF`; as it is about to send the layer into the session
# it has just recorded (MODULE._send: an ordinary upload, or a piece-level one), another
# `pybuild push` of the same image runs to its end.
_WORKER = textwrap.dedent("""
    import importlib, subprocess, sys
    from builder.cli import main

    module = importlib.import_module(sys.argv[1])
    real = module._send

    async def send(*args, **kwargs):
        if not getattr(send, "done", False):
            send.done = True
            subprocess.run([sys.executable, "-m", "builder", "push", "-q", "--storage",
                            *sys.argv[2:]], check=True)
        return await real(*args, **kwargs)

    module._send = send
    main(["push", "-q", "--storage", *sys.argv[2:]], prog_name="pybuild")
""")


def test_a_push_whose_session_another_push_finished_starts_over(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    # a layer of several upload chunks (16 MiB each)
    image = make_image([[random_bytes(1 << 20, i) for i in range(40)]])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with registries.pybuild_registry(tmp_path / "registry") as registry:
        ref = registry.ref("app", "1")

        seed_store(storage, {ref: image})
        push = subprocess.run([sys.executable, "-c", _WORKER, "registry.client.push",
                               str(storage), ref], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert push.returncode == 0, push.stderr
        got = subprocess.run([sys.executable, "-m", "builder", "copy", "-q", f"docker://{ref}",
                              f"oci:{tmp_path / 'pulled'}:x"], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr


def test_a_piece_push_whose_session_another_push_finished_succeeds(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    v1, v2, _ = versions()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with registries.pybuild_registry(tmp_path / "registry") as registry:
        old, new = registry.ref("app", "1"), registry.ref("app", "2")

        seed_store(storage, {old: v1, new: v2})
        first = subprocess.run([sys.executable, "-m", "builder", "push", "-q", "--storage",
                                str(storage), old], env=env, capture_output=True, text=True,
                               timeout=120, check=False)
        assert first.returncode == 0, first.stderr
        # v2 shares most of its layer's pieces with v1: its layer goes piece by piece
        push = subprocess.run([sys.executable, "-c", _WORKER, "registry.client.push_pieces",
                               str(storage), new], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert push.returncode == 0, push.stderr
        got = subprocess.run([sys.executable, "-m", "builder", "copy", "-q", f"docker://{new}",
                              f"oci:{tmp_path / 'pulled'}:x"], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert got.returncode == 0, got.stderr
