"""``oci-archive:FILE[:TAG]`` (an OCI layout in a tar), as ``pybuild copy`` reads and
writes it: against skopeo's own archives, and against hostile ones."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.layouts import LayoutError, OciLayout
from registry.client.progress import Progress
from registry.client.remote import RegistryClient
from testkit.tools import require_tool

from .helpers import simple_image, store_image


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary layouts go here, so a test sees any that is left behind."""
    where = tmp_path / "tmpdir"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient) -> Digest:
    result = await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                              Progress("quiet"), CopyOptions())
    return result.digest


def test_the_transport_parses_as_skopeo_spells_it() -> None:
    named = parse_endpoint("oci-archive:/a/b.tar:v1")
    assert (named.kind, str(named.path), named.name) == ("oci-archive", "/a/b.tar", "v1")
    bare = parse_endpoint("oci-archive:b.tar")
    assert (bare.kind, str(bare.path), bare.name) == ("oci-archive", "b.tar", None)
    assert str(named) == "oci-archive:/a/b.tar:v1"


async def _skopeo_reads_and_rewrites(skopeo: str, ours: str, theirs: str) -> Digest:
    """The digest of the manifest skopeo reads in ``ours``, after it wrote ``theirs`` from it."""
    inspected = (await asyncio.to_thread(subprocess.run, [skopeo, "inspect", "--raw", ours],
                                         capture_output=True, check=True)).stdout
    await asyncio.to_thread(subprocess.run, [skopeo, "copy", "-q", ours, theirs],
                            capture_output=True, check=True)
    return Digest.of(inspected)


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_a_full_reference_as_the_name_parses_as_skopeo_splits_it(kind: str) -> None:
    # containers/image ends the path at the first colon: podman writes full references
    # (with a registry port) as the ref.name of what it saves.
    named = parse_endpoint(f"{kind}:/a/b.tar:127.0.0.1:5000/team/app:1")
    assert (named.kind, str(named.path), named.name) == (kind, "/a/b.tar", "127.0.0.1:5000/team/app:1")
    assert parse_endpoint(f"{kind}:out:localhost/app:1").name == "localhost/app:1"


async def test_an_archive_named_with_a_full_reference_goes_both_ways_with_skopeo(
    images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    skopeo = require_tool("skopeo")
    name = "127.0.0.1:5000/team/app:1"
    digest = await store_image(images, "localhost/app:1", simple_image(81, (60_000,)))
    ours = tmp_path / "ours.tar"
    assert await copy("local:localhost/app:1", f"oci-archive:{ours}:{name}", images, client) == digest
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["ours.tar"]
    theirs = tmp_path / "theirs.tar"
    assert await _skopeo_reads_and_rewrites(skopeo, f"oci-archive:{ours}:{name}",
                                            f"oci-archive:{theirs}:localhost/back:2") == digest
    assert await copy(f"oci-archive:{theirs}:localhost/back:2", "local:localhost/back:2",
                      images, client) == digest


async def test_an_archive_goes_both_ways_with_skopeo(
    images: ImageStore, client: RegistryClient, tmp_path: Path, own_tmpdir: Path
) -> None:
    skopeo = require_tool("skopeo")
    image = simple_image(80, (200_000, 40_000))
    digest = await store_image(images, "localhost/app:1", image)
    ours = tmp_path / "ours.tar"
    assert await copy("local:localhost/app:1", f"oci-archive:{ours}:v1", images, client) == digest
    with tarfile.open(ours) as tar:
        names = tar.getnames()
    assert names[:2] == ["oci-layout", "index.json"]
    assert f"blobs/sha256/{digest.encoded}" in names
    # skopeo reads it, and writes its own archive of it
    theirs = tmp_path / "theirs.tar"
    assert await _skopeo_reads_and_rewrites(skopeo, f"oci-archive:{ours}:v1",
                                            f"oci-archive:{theirs}:v2") == digest
    other = await ImageStore.open(tmp_path / "other")
    try:
        assert await copy(f"oci-archive:{theirs}:v2", "local:localhost/app:2", other, client) == digest
        for blob in (image.config, *image.layers):
            assert await other.store.read_bytes(Digest.of(blob)) == blob
        assert (await other.store.fsck()).ok
    finally:
        await other.close()
    # the same image twice makes the same archive
    again = tmp_path / "again.tar"
    await copy("local:localhost/app:1", f"oci-archive:{again}:v1", images, client)
    assert again.read_bytes() == ours.read_bytes()
    assert list(own_tmpdir.iterdir()) == []


async def test_errors_name_the_archive_and_leave_nothing(
    images: ImageStore, client: RegistryClient, tmp_path: Path, own_tmpdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = simple_image(81, (30_000,))
    await store_image(images, "localhost/app:1", image)
    archive = tmp_path / "img.tar"
    await copy("local:localhost/app:1", f"oci-archive:{archive}:v1", images, client)
    with pytest.raises(LayoutError, match=rf"^oci-archive:{archive} has no image 'v9' \(it has: v1\)$"):
        await copy(f"oci-archive:{archive}:v9", "local:localhost/x:1", images, client)
    (tmp_path / "notes.txt").write_text("not a tar")
    cases = [
        (f"oci-archive:{tmp_path / 'notes.txt'}", "is not a readable tar"),
        (f"oci-archive:{tmp_path / 'none.tar'}", "does not exist"),
        (f"oci-archive:{tmp_path}", "is a directory; an OCI layout directory is read with oci:"),
    ]
    for src, message in cases:
        with pytest.raises(LayoutError, match=message):
            await copy(src, "local:localhost/x:1", images, client)
    # a write that fails half-way (the disk, say) leaves no archive, not even the old one
    exported: list[Digest] = []

    async def failing(self: OciLayout, store: object, digest: Digest, *_: object) -> None:
        exported.append(digest)
        raise OSError(28, "No space left on device")

    archive.write_bytes(b"the previous archive")
    with monkeypatch.context() as patch:
        patch.setattr(OciLayout, "export_blob", failing)
        with pytest.raises(LayoutError, match=rf"^cannot write oci-archive:{archive}: no space left"):
            await copy("local:localhost/app:1", f"oci-archive:{archive}:v2", images, client)
    assert exported and archive.read_bytes() == b"the previous archive"
    assert not archive.with_name("img.tar.tmp").exists()
    with pytest.raises(LayoutError, match="is a directory: name the archive file"):
        await copy("local:localhost/app:1", f"oci-archive:{tmp_path}", images, client)
    assert list(own_tmpdir.iterdir()) == []
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".img.tar")]


async def test_an_archive_is_laid_out_beside_it_not_in_tmpdir(
    images: ImageStore, client: RegistryClient, tmp_path: Path, own_tmpdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TMPDIR too small for the image (here: none at all) does not fail the write: the
    temporary layout is made beside the archive, on the file system that must hold it."""
    image = simple_image(82, (30_000,))
    await store_image(images, "localhost/app:1", image)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    dest = tmp_path / "out"
    dest.mkdir()
    laid_out: list[Path] = []
    real = OciLayout.export_blob

    async def watched(self: OciLayout, *args: object) -> None:
        laid_out.append(self.path)
        await real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(OciLayout, "export_blob", watched)
    assert await copy("local:localhost/app:1", f"oci-archive:{dest / 'img.tar'}", images,
                      client) == image.digest
    assert laid_out and all(p.parent.parent == dest for p in laid_out)
    assert [p.name for p in dest.iterdir()] == ["img.tar"]
    with tarfile.open(dest / "img.tar") as tar:
        assert "index.json" in tar.getnames()


def _hostile(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> None:
    with tarfile.open(path, "w") as tar:
        for name, body in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                           ("index.json", json.dumps({"schemaVersion": 2, "manifests": []}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(("member", "message"), [
    (_member("../escaped"), "outside the destination"),
    # an absolute name is unpacked inside (its leading / dropped): the layout is then empty
    (_member("/tmp/absolute-from-archive"), r"evil.tar holds no image \(its index.json lists none\)"),
    (_member("blobs/link", tarfile.SYMTYPE, "/etc/passwd"), "is neither a file nor a directory"),
    (_member("blobs/hard", tarfile.LNKTYPE, "index.json"), "is neither a file nor a directory"),
    (_member("blobs/dev", tarfile.CHRTYPE), "is neither a file nor a directory"),
])
async def test_a_hostile_archive_is_refused_and_writes_nothing_outside(
    images: ImageStore, client: RegistryClient, tmp_path: Path, own_tmpdir: Path,
    member: tarfile.TarInfo, message: str
) -> None:
    archive = tmp_path / "evil" / "evil.tar"
    archive.parent.mkdir()
    _hostile(archive, member)
    with pytest.raises(LayoutError, match=message):
        await copy(f"oci-archive:{archive}", "local:localhost/x:1", images, client)
    assert sorted(p.name for p in archive.parent.iterdir()) == ["evil.tar"]
    assert not (tmp_path / "escaped").exists() and not (own_tmpdir / "escaped").exists()
    assert not Path("/tmp/absolute-from-archive").exists()
    assert list(own_tmpdir.iterdir()) == []


async def test_the_unpacked_layout_is_removed_off_the_event_loop(
    images: ImageStore, client: RegistryClient, tmp_path: Path, own_tmpdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleting a temporary layout of gigabytes waits for the disk: not on the loop, where
    it would stall the progress and every transfer beside it."""
    image = simple_image(83, (30_000,))
    await store_image(images, "localhost/app:1", image)
    archive = tmp_path / "img.tar"
    await copy("local:localhost/app:1", f"oci-archive:{archive}", images, client)
    removed_on: list[threading.Thread] = []
    real = shutil.rmtree

    def rmtree(path: object, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(own_tmpdir)):
            removed_on.append(threading.current_thread())
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert await copy(f"oci-archive:{archive}", "local:localhost/app:2", images, client) \
        == image.digest
    assert removed_on and threading.main_thread() not in removed_on
    assert list(own_tmpdir.iterdir()) == []


_KILLED_COPY = """
import asyncio, contextlib, sys
from pathlib import Path
from registry.client.oci_archive import _beside

async def main():
    async with contextlib.AsyncExitStack() as stack:
        tmp = _beside(stack, Path(sys.argv[1]))
        (tmp / "layout").mkdir()
        (tmp / "layout" / "big").write_bytes(b"x" * 100_000)
        print(tmp, flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_what_a_killed_copy_left_is_removed_by_the_next_one(
    images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    """A copy killed outright (SIGKILL, a CI job's timeout) leaves its temporary directory
    beside the archive, as large as the image; the next copy to that archive removes it,
    but not the one of a copy still running, nor anything else of the directory."""
    await store_image(images, "localhost/app:1", simple_image(47))
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "image.tar"
    (out / ".image.tar.notmine.tmp").mkdir()  # not of the temporary directories' pattern
    (out / ".other.tar.abcdefgh.tmp").mkdir()  # another archive's
    workers = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_COPY, str(archive), stdout=subprocess.PIPE)
        for _ in range(2)]
    try:
        made = [Path((await w.stdout.readline()).decode().strip())
                for w in workers if w.stdout is not None]
        assert all(p.is_dir() for p in made)
        workers[0].kill()
        await workers[0].wait()  # its flock goes with it, its directory stays
        await copy("local:localhost/app:1", f"oci-archive:{archive}:v1", images, client)
        assert not made[0].exists(), "the killed copy's directory stays behind"
        assert made[1].is_dir(), "a running copy's directory was taken"
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [".image.tar.notmine.tmp", ".other.tar.abcdefgh.tmp", "image.tar", made[1].name])
    finally:
        for w in workers:
            if w.returncode is None:
                w.kill()
            await w.communicate()
