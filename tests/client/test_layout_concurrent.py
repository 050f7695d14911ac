"""Several ``pybuild`` processes writing into one OCI layout at once (parallel CI jobs
copying images, or exporting a build cache, to one directory): every one succeeds, the
layout keeps every tag they wrote, and every blob file holds its digest's bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cas import Digest
from registry.client import layout_claims, layouts
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.layout_claims import Claims
from registry.client.progress import Progress
from registry.client.remote import RegistryClient
from registry.client.transfer import gather_or_cancel

from .helpers import SampleImage, make_image, random_bytes, seed_store, simple_image, store_image

ROOT = Path(__file__).resolve().parents[2]


def test_processes_copying_into_one_layout_keep_every_tag_and_blob(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    # big enough layers that the copies are writing the same blob files at the same time
    image = make_image([[random_bytes(1 << 20, 10 * n + i) for i in range(8)] for n in range(3)])

    seed_store(storage, {"example.com/app:1": image})
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


def _source_layout(root: Path, image: SampleImage, tag: str, fifo_layer: int | None = None) -> Path:
    """``image`` in a new OCI layout ``root`` tagged ``tag``; layer ``fifo_layer`` (if
    given) is a named pipe, so a copy reading it waits until the test writes it."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    for n, data in enumerate((image.config, image.manifest, *image.layers)):
        path = blobs / Digest.of(data).encoded
        if n - 2 == fifo_layer:
            os.mkfifo(path)
        else:
            path.write_bytes(data)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(image.digest),
        "size": len(image.manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return root


def _until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert proc.poll() is None, f"the copy ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("existing", [False, True], ids=["new-layout", "existing-layout"])
def test_a_failed_writer_removes_only_what_no_other_writer_needs(tmp_path: Path, existing: bool) -> None:
    """Writer A fails (a corrupt blob in its source) after writing layers it shares with
    writer C, which has finished and tagged meanwhile, and with writer B, still running
    and relying on them: A takes back only its own image's blobs, and B and C's tags
    stay whole, as does a tag that was there before."""
    shared = [[random_bytes(1 << 16, 100 + i)] for i in range(2)]
    own = {name: [[random_bytes(1 << 16, seed + i)] for i in range(2)]
           for name, seed in (("a", 200), ("b", 300), ("c", 400), ("old", 500))}
    images = {name: make_image(shared + chunks) for name, chunks in own.items()}
    images["c"] = make_image(shared + own["c"][:1])
    layout = tmp_path / "layout"
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def copy(name: str, fifo: bool = False) -> subprocess.Popen[str]:
        src = _source_layout(tmp_path / f"src-{name}", images[name], name, 3 if fifo else None)
        # One blob at a time, in the manifest's order: the named pipe, last, is read
        # once every other blob is in the layout.
        return subprocess.Popen(
            [sys.executable, "-m", "builder", "copy", "-q", "--jobs", "1", "--storage",
             str(tmp_path / f"storage-{name}"), f"oci:{src}:{name}", f"oci:{layout}:{name}"],
            stderr=subprocess.PIPE, text=True, env=env)

    def blob(data: bytes) -> Path:
        return layout / "blobs" / "sha256" / Digest.of(data).encoded

    def feed(name: str, data: bytes) -> None:
        with open(tmp_path / f"src-{name}" / "blobs" / "sha256"
                  / Digest.of(images[name].layers[3]).encoded, "wb") as f:
            f.write(data)

    if existing:
        with copy("old") as old:
            assert old.wait(timeout=120) == 0, old.stderr.read()  # type: ignore[union-attr]
    with copy("a", fifo=True) as a, contextlib.ExitStack() as stack:
        _until(lambda: blob(images["a"].layers[2]).exists(), "A wrote its layers", a)
        with copy("c") as c:
            assert c.wait(timeout=120) == 0, c.stderr.read()  # type: ignore[union-attr]
        b = stack.enter_context(copy("b", fifo=True))
        _until(lambda: blob(images["b"].layers[2]).exists(), "B wrote its layers", b)
        feed("a", b"not the layer")
        assert a.wait(timeout=120) != 0
        assert "does not match" in a.stderr.read()  # type: ignore[union-attr]
        feed("b", images["b"].layers[3])
        assert b.wait(timeout=120) == 0, b.stderr.read()  # type: ignore[union-attr]

    index = json.loads((layout / "index.json").read_text())
    tagged = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
              for m in index["manifests"]}
    kept = ["old", "b", "c"] if existing else ["b", "c"]
    assert sorted(tagged) == sorted(kept)
    needed = {Digest.of(d).encoded for name in kept
              for d in (images[name].manifest, images[name].config, *images[name].layers)}
    files = {p.name: p for p in (layout / "blobs" / "sha256").iterdir()}
    assert set(files) == needed  # A's own blobs are gone, and no temporary file is left
    for name, path in files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == name
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_a_failed_writer_that_made_the_layout_leaves_no_directory(tmp_path: Path) -> None:
    """Alone, a writer that fails removes the layout it made, as before."""
    image = make_image([[random_bytes(1 << 16, 600 + i)] for i in range(4)])
    src = _source_layout(tmp_path / "src", image, "a")
    (src / "blobs" / "sha256" / Digest.of(image.layers[3]).encoded).write_bytes(b"corrupt")
    layout = tmp_path / "out" / "layout"
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "builder", "copy", "-q", "--jobs", "1", "--storage",
         str(tmp_path / "storage"), f"oci:{src}:a", f"oci:{layout}:a"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert done.returncode != 0 and "does not match" in done.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_a_writer_holds_more_blobs_than_the_soft_open_file_limit(tmp_path: Path) -> None:
    """A writer holds a descriptor per blob: an image of more blobs than the soft limit of
    open files raises it (up to the hard limit) rather than failing with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/proc/self/fd")) + 32
    blobs = [tmp_path / f"blob{n}" for n in range(4 * 32)]
    for blob in blobs:
        blob.write_bytes(b"x")
    assert hard == resource.RLIM_INFINITY or hard >= low + len(blobs)
    claims = Claims()
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        assert all(claims.hold(blob) for blob in blobs)
        assert len(claims.held) == len(blobs)
    finally:
        claims.release()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_write_cut_short_never_lands_after_the_cleanup(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # One blob's write fails (a full disk) while another's worker thread is still writing:
    # the failed copy is cancelled at once, and its cleanup must not run before that
    # worker has put (or not put) its file in place, or the file stays behind.
    layout = tmp_path / "layout"  # there already: its directories stay after the cleanup
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    before = sorted(p.name for p in layout.rglob("*"))
    undone = threading.Event()
    real_undo, real_replace = Claims.undo, layouts._replace_file

    def undo(self: Claims, root: Path, existed: set[Path]) -> None:
        real_undo(self, root, existed)
        undone.set()

    def replace(path: Path, data: bytes) -> None:
        if data == b"slow":
            undone.wait(1)  # lands after the cleanup unless the cleanup waits for it
        elif data == b"full":
            raise OSError(28, "No space left on device", str(path))
        real_replace(path, data)

    monkeypatch.setattr(Claims, "undo", undo)
    monkeypatch.setattr(layouts, "_replace_file", replace)

    async def copy() -> None:
        async with layout_claims.undone_on_failure(layout) as target:
            assert target is not None
            await gather_or_cancel([asyncio.create_task(target.write_bytes(Digest.of(data), data))
                                    for data in (b"slow", b"full")])

    with pytest.raises(layouts.LayoutError, match="no space left"):
        asyncio.run(copy())
    assert sorted(p.name for p in layout.rglob("*")) == before


async def test_temporary_files_of_killed_writers_go_with_the_next_copy(tmp_path: Path) -> None:
    """A copy killed outright (SIGKILL, a CI job's timeout) leaves the blob file it was
    writing under a temporary name (``<hex>.<pid>-<hex>.tmp``: as large as a layer); the
    next copy into the layout removes it, not a temporary file of a writer still running."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    alive = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    left = [blobs / f"{'a' * 64}.{dead.pid}-0123abcd.tmp", layout / f"index.json.{dead.pid}-89abcdef.tmp"]
    kept = [blobs / f"{'b' * 64}.{alive.pid}-0123abcd.tmp", blobs / "notes.tmp"]
    for p in (*left, *kept):
        p.write_bytes(b"partial")
    try:
        async with await ImageStore.open(tmp_path / "local") as images, RegistryClient() as client:
            await store_image(images, "localhost/app:1", simple_image(59))
            await copy_image(parse_endpoint("local:localhost/app:1"), parse_endpoint(f"oci:{layout}:v1"),
                             images, client, Progress("quiet"), CopyOptions())
    finally:
        alive.kill()
        await alive.wait()
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert json.loads((layout / "index.json").read_bytes())["manifests"]
