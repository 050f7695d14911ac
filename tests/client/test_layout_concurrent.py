"""Several ``pybuild`` processes writing into one OCI layout at once (parallel CI jobs
copying images, or exporting a build cache, to one directory): every one succeeds, the
layout keeps every tag they wrote, and every blob file holds its digest's bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from registry.client.image_store import ImageStore

from .helpers import make_image, random_bytes, store_image

ROOT = Path(__file__).resolve().parents[2]


def test_processes_copying_into_one_layout_keep_every_tag_and_blob(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    # big enough layers that the copies are writing the same blob files at the same time
    image = make_image([[random_bytes(1 << 20, 10 * n + i) for i in range(8)] for n in range(3)])

    async def seed() -> None:
        async with await ImageStore.open(storage) as images:
            await store_image(images, "example.com/app:1", image)

    asyncio.run(seed())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tags = [f"t{n}" for n in range(4)]
    for round_ in range(3):
        layout = tmp_path / f"layout{round_}"
        with contextlib.ExitStack() as stack:
            copies = [stack.enter_context(subprocess.Popen(
                [sys.executable, "-m", "builder", "copy", "-q", "--storage", str(storage),
                 "local:example.com/app:1", f"oci:{layout}:{tag}"],
                stderr=subprocess.PIPE, text=True, env=env)) for tag in tags]
            failed = [(c.wait(timeout=120), c.stderr.read()) for c in copies]  # type: ignore[union-attr]
        assert all(code == 0 for code, _ in failed), failed
        index = json.loads((layout / "index.json").read_text())
        named = sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                       for m in index["manifests"])
        assert named == tags
        blobs = sorted((layout / "blobs" / "sha256").iterdir())
        assert [p.name for p in blobs] == sorted(
            str(d).removeprefix("sha256:") for d in image.blob_digests() | {str(image.digest)})
        for blob in blobs:
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
