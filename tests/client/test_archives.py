"""Docker archives, OCI layouts and transport names, as ``pybuild copy`` reads and writes them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.layouts import LayoutError, write_docker_archive
from registry.client.progress import Progress
from registry.client.remote import RegistryClient
from registry.oci import Manifest

from .helpers import SampleImage, simple_image, store_image


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient, **kw: object):
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(**kw))  # type: ignore[arg-type]


def docker_save(path: Path, images: list[tuple[SampleImage, list[str]]]) -> None:
    """A tar as ``docker save a b`` writes it: RepoTags in Docker's short form."""
    entries = []
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for image, tags in images:
            config = f"{Digest.of(image.config).encoded}.json"
            add(config, image.config)
            layers = []
            for layer in image.layers:
                layers.append(f"{Digest.of(layer).encoded}/layer.tar")
                add(layers[-1], layer)
            entries.append({"Config": config, "RepoTags": tags, "Layers": layers})
        add("manifest.json", json.dumps(entries).encode())


async def test_a_docker_save_archive_is_read_by_the_short_names_docker_writes(
    images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    busybox, alpine = simple_image(70, (30_000,)), simple_image(71, (30_000,))
    archive = tmp_path / "saved.tar"
    docker_save(archive, [(busybox, ["busybox:latest"]), (alpine, ["alpine:3", "localhost:5000/a/b:1"])])
    for name, image in (("busybox:latest", busybox), ("busybox", busybox),
                        ("docker.io/library/alpine:3", alpine), ("alpine:3", alpine),
                        ("localhost:5000/a/b:1", alpine)):
        await copy(f"docker-archive:{archive}:{name}", "local:localhost/picked:1", images, client)
        manifest, _ = await images.get("localhost/picked:1")
        assert manifest.config.digest == Digest.of(image.config), name
    with pytest.raises(LayoutError, match="has no image docker.io/library/alpine:latest"):
        await copy(f"docker-archive:{archive}:alpine", "local:localhost/picked:1", images, client)


@pytest.mark.parametrize("text", [
    "containers-storage:foo", "docker-daemon:busybox:latest", "dir:/tmp/out", "sif:x.sif",
    "tarball:x.tar", "ostree:x@/repo",
])
def test_a_transport_pybuild_does_not_support_is_refused_not_taken_for_a_docker_hub_image(text: str) -> None:
    name = text.partition(":")[0]
    with pytest.raises(ValueError, match=f"unsupported transport {name}; pybuild reads/writes: docker://REF"):
        parse_endpoint(text)


def test_an_unknown_transport_followed_by_a_path_is_named_as_such() -> None:
    with pytest.raises(ValueError, match="unknown transport oci-archiv in 'oci-archiv:/x.tar'"):
        parse_endpoint("oci-archiv:/x.tar")
    with pytest.raises(ValueError, match="written docker://REF"):
        parse_endpoint("docker:alpine")


@pytest.mark.parametrize(("text", "ref"), [
    ("localhost:5000/x", "localhost:5000/x:latest"),
    ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000/a/b:1"),
    ("docker:5000/app:1", "docker:5000/app:1"),
    ("myhost:443/app", "myhost:443/app:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("dirt:1", "docker.io/library/dirt:1"),
    ("docker://localhost:5000/a", "localhost:5000/a:latest"),
])
def test_references_that_look_like_transports_still_parse(text: str, ref: str) -> None:
    assert str(parse_endpoint(text).ref) == ref
    assert str(parse_endpoint(f"local:{text.removeprefix('docker://')}").ref) == ref


def test_pull_and_push_refuse_a_transport_where_a_reference_is_asked_for(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["pull", "containers-storage:foo"], ["push", "foo:1", "dir:/tmp/out"],
                 ["pull", "oci:./layout:1"], ["pull", "oci-archive:x.tar"],
                 ["push", "oci-archive:x.tar:1"]):
        out = runner.invoke(main, [*args, "--storage", str(tmp_path / "s")])
        assert out.exit_code == 2, out.output
        assert "transport" in out.output and "Traceback" not in out.output


def test_a_docker_archive_named_with_a_digest_is_refused_as_it_has_no_tag() -> None:
    digest = "sha256:" + "a" * 64
    for text in (f"docker-archive:x.tar:localhost:5000/a/b@{digest}", f"docker-archive:x.tar:b:1@{digest}"):
        with pytest.raises(ValueError, match="the reference does not include a tag"):
            parse_endpoint(text)
    assert parse_endpoint("docker-archive:x.tar:localhost:5000/a/b:1").name == "localhost:5000/a/b:1"


async def test_a_failed_docker_archive_write_leaves_no_temporary_file(images: ImageStore, tmp_path: Path) -> None:
    image = simple_image(72, (30_000,))
    await images.store.put(image.config)  # the layer is not in the store: the write fails midway
    archive = tmp_path / "out.tar"
    with pytest.raises(LayoutError, match="is not in the local store"):
        await write_docker_archive(archive, "localhost/a:1", Manifest.parse(image.manifest), images.store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]


@pytest.mark.parametrize(("dst", "message"), [
    ("docker-archive:{tmp}", "is a directory: name the archive file to write"),
    ("docker-archive:{tmp}/no/such/dir/x.tar", "does not exist; create it"),
    ("oci:{tmp}/file", "is a file, not a directory: an OCI layout is a directory"),
    ("oci:{tmp}/file/layout", "file is a file, not a directory"),
])
async def test_a_destination_that_cannot_be_written_is_named_with_the_fix_before_any_blob_moves(
    images: ImageStore, client: RegistryClient, tmp_path: Path, dst: str, message: str
) -> None:
    await store_image(images, "localhost/a:1", simple_image(73, (30_000,)))
    (tmp_path / "file").write_text("not a layout")
    with pytest.raises(LayoutError, match=message):
        await copy("local:localhost/a:1", dst.format(tmp=tmp_path), images, client)
    assert not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "file").read_text() == "not a layout"


async def test_reading_an_archive_or_a_layout_shows_each_blob_it_imports(
    images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # A docker save archive or an OCI layout read into the local store moves bytes: each
    # blob read is a task with its bytes (JSON events here), not a silent wait.
    image = simple_image(72, (200_000, 300_000))
    archive = tmp_path / "saved.tar"
    docker_save(archive, [(image, ["app:1"])])

    async def events(src: str, dst: str, into: ImageStore) -> list[dict[str, object]]:
        out = io.StringIO()
        progress = Progress("json", out)
        await copy_image(parse_endpoint(src), parse_endpoint(dst), into, client, progress, CopyOptions())
        progress.close()
        return [json.loads(line) for line in out.getvalue().splitlines()]

    got = await events(f"docker-archive:{archive}:app:1", "local:localhost/app:1", images)
    imported = [e for e in got if e["event"] == "done" and e["status"] == "imported"]
    assert sorted(e["bytes"] for e in imported) == sorted(len(layer) for layer in image.layers)
    assert got[-1]["event"] == "summary" and got[-1]["transferred"] == sum(map(len, image.layers))

    await copy("local:localhost/app:1", f"oci:{tmp_path / 'layout'}:1", images, client)
    other = await ImageStore.open(tmp_path / "other")
    try:
        got = await events(f"oci:{tmp_path / 'layout'}:1", "local:localhost/app:1", other)
        done = {e["id"]: e for e in got if e["event"] == "done"}
        for blob in (*image.layers, image.config):
            assert done[str(Digest.of(blob))]["status"] == "imported"
            assert done[str(Digest.of(blob))]["bytes"] == len(blob)
        # Read again into the same store: every blob is there already.
        got = await events(f"oci:{tmp_path / 'layout'}:1", "local:localhost/app:2", other)
        assert {e["status"] for e in got if e["event"] == "done"} == {"exists"}
    finally:
        await other.close()
