"""Docker archives, OCI layouts and transport names, as ``pybuild copy`` reads and writes them."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from builder.cli import main
from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.docker_archive import write_docker_archive
from registry.client.image_store import ImageNotFound, ImageStore
from registry.client.layouts import LayoutError
from registry.client.progress import Progress
from registry.client.pull import BlobError
from registry.client.remote import RegistryClient
from registry.oci import OCI_LAYER_NONDISTRIBUTABLE_GZIP, Manifest
from tests.helpers.disks import small_filesystem

from .helpers import SampleImage, make_index, simple_image, store_image


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


@pytest.mark.parametrize("manifest, links, words", [
    (b'["x"]', (), "manifest.json is not a list of images"),
    (b'[{"Layers": []}]', (), "needs a Config file name and a Layers list"),
    (b'[{"Config": "c.json", "Layers": 5}]', (), "needs a Config file name and a Layers list"),
    (b'[{"Config": "c.json", "Layers": [null]}]', (), "needs a Config file name and a Layers list"),
    (b'[{"Config": "c.json", "Layers": ["gone/layer.tar"]}]', (), "'gone/layer.tar', which "
     "manifest.json names, is not in the archive"),
    (b'[{"Config": "c.json", "Layers": ["l.tar"]}]', (("l.tar", "../../etc/passwd"),),
     "'l.tar', which manifest.json names, is not in the archive"),
    (b'[{"Config": "c.json", "RepoTags": 7, "Layers": []}]', (), "has no image"),
    (b'[{"Config":', (), "manifest.json is not JSON"),
])
async def test_a_damaged_or_hostile_docker_archive_is_named_not_a_crash(
    images: ImageStore, client: RegistryClient, tmp_path: Path, manifest: bytes,
    links: tuple[tuple[str, str], ...], words: str
) -> None:
    """docker load says what is wrong with such an archive; so does a copy from it."""
    archive = tmp_path / "odd.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("manifest.json", manifest), ("c.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    with pytest.raises(LayoutError, match=re.escape(words)):
        await copy(f"docker-archive:{archive}:x/y:1" if b"RepoTags" in manifest
                   else f"docker-archive:{archive}", "local:localhost/odd:1", images, client)


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


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_registry_url_given_for_a_reference_says_what_to_name_instead(scheme: str) -> None:
    # As Docker and skopeo refuse it ("invalid reference format"), with the name to give.
    with pytest.raises(ValueError, match=r"an image reference has no URL scheme: name it "
                                         r"127\.0\.0\.1:5000/app:1 \(loopback and --insecure"):
        parse_endpoint(f"{scheme}://127.0.0.1:5000/app:1")
    out = CliRunner().invoke(main, ["pull", f"{scheme}://127.0.0.1:5000/app:1"])
    assert out.exit_code == 2 and "name it 127.0.0.1:5000/app:1 " in out.output


def test_pull_and_push_refuse_a_transport_where_a_reference_is_asked_for(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["pull", "containers-storage:foo"], ["push", "foo:1", "dir:/tmp/out"],
                 ["pull", "oci:./layout:1"], ["pull", "oci-archive:x.tar"],
                 ["push", "oci-archive:x.tar:1"]):
        out = runner.invoke(main, [*args, "--storage", str(tmp_path / "s")])
        assert out.exit_code == 2, out.output
        assert "transport" in out.output and "Traceback" not in out.output


@pytest.mark.parametrize("text", ["oci:", "oci::latest", "oci-archive:", "oci-archive::x"])
def test_a_layout_or_archive_with_an_empty_path_is_refused(text: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """As skopeo: ``oci:`` names no directory (it is not the current one, which a copy
    would fill with blobs)."""
    with pytest.raises(ValueError, match="the path is empty"):
        parse_endpoint(text)
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(main, ["copy", "--storage", str(tmp_path / "s"), "--json",
                                    "local:example.com/a:1", text])
    assert got.exit_code == 2 and "the path is empty" in got.stderr
    assert json.loads(got.stdout)["exit_code"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


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


async def test_writing_a_layout_or_an_archive_from_the_local_store_shows_each_blob_it_exports(
    images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # A copy from the local store to oci: or docker-archive: writes every blob (gigabytes
    # for a large image): each is a task with its bytes, and the summary counts them,
    # rather than minutes of silence ending in "0 B transferred".
    image = simple_image(76, (200_000, 300_000))
    await store_image(images, "localhost/app:1", image)
    blobs = {str(Digest.of(b)): len(b) for b in (image.config, *image.layers)}

    async def events(dst: str) -> list[dict[str, Any]]:
        out = io.StringIO()
        progress = Progress("json", out)
        result = await copy_image(parse_endpoint("local:localhost/app:1"), parse_endpoint(dst), images,
                                  client, progress, CopyOptions())
        progress.close()
        got = [json.loads(line) for line in out.getvalue().splitlines()]
        assert result.blobs == {e["id"]: e["status"] for e in got if e["event"] == "done"}, dst
        return got

    for dst in (f"oci:{tmp_path / 'layout'}:1", f"docker-archive:{tmp_path / 'app.tar'}:app:1",
                f"oci-archive:{tmp_path / 'app-oci.tar'}:1"):
        got = await events(dst)
        done = {e["id"]: e for e in got if e["event"] == "done"}
        assert {k: (e["status"], e["bytes"], e["reused"]) for k, e in done.items()} == {
            k: ("exported", n, 0) for k, n in blobs.items()}, dst
        assert got[-1]["event"] == "summary" and got[-1]["transferred"] == sum(blobs.values()), dst
    # Into the same layout again: every blob is there already.
    got = await events(f"oci:{tmp_path / 'layout'}:2")
    assert {e["status"] for e in got if e["event"] == "done"} == {"exists"}
    assert got[-1]["transferred"] == 0 and got[-1]["reused"] == sum(blobs.values())


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
async def test_an_archive_on_a_full_disk_is_named_with_the_fix_and_nothing_of_it_is_left(
    images: ImageStore, client: RegistryClient, tmp_path: Path, kind: str
) -> None:
    # A write's ENOSPC names no file: the error must still say which destination is full
    # (not blame the local store, as if --storage were the fix), and keep nothing of it.
    image = simple_image(77, (1 << 20, 1 << 20))
    await store_image(images, "localhost/app:1", image)
    with small_filesystem(tmp_path / "small", "1m") as small:
        archive = small / "app.tar"
        with pytest.raises(LayoutError) as caught:
            await copy("local:localhost/app:1", f"{kind}:{archive}", images, client)
        assert str(caught.value) == (
            f"cannot write {kind}:{archive}: no space left on device; nothing of it was kept: "
            "free space there (or make it writable), or choose another destination")
        assert list(small.iterdir()) == []


async def test_an_untagged_image_of_an_archive_or_a_layout_is_named_by_its_place_as_skopeo_names_it(
    images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # `docker save IMAGE_ID...` writes no RepoTags, and a layout's entries need no ref.name:
    # the error lists the images by place, and docker-archive:FILE:@N (skopeo's syntax; newer
    # skopeo reads oci:DIR:@N too) picks one.
    first, second = simple_image(74, (30_000,)), simple_image(75, (30_000,))
    archive = tmp_path / "saved.tar"
    docker_save(archive, [(first, []), (second, [])])
    with pytest.raises(LayoutError, match=r"holds 2 images \(@0 \(untagged\), @1 \(untagged\)\); "
                                          r"name one \(.*docker-archive:FILE:@N"):
        await copy(f"docker-archive:{archive}", "local:localhost/picked:1", images, client)
    for place, image in enumerate((first, second)):
        await copy(f"docker-archive:{archive}:@{place}", "local:localhost/picked:1", images, client)
        manifest, _ = await images.get("localhost/picked:1")
        assert manifest.config.digest == Digest.of(image.config)
        await copy("local:localhost/picked:1", f"oci:{tmp_path / 'layout'}:{place}", images, client)
    with pytest.raises(LayoutError, match="has no image @2"):
        await copy(f"docker-archive:{archive}:@2", "local:localhost/picked:1", images, client)

    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    for entry in index["manifests"]:
        del entry["annotations"]
    (tmp_path / "layout" / "index.json").write_text(json.dumps(index))
    digests = [entry["digest"] for entry in index["manifests"]]
    with pytest.raises(LayoutError, match=rf"\(@0 {digests[0][7:19]} \(untagged\), @1 {digests[1][7:19]} "
                                          r"\(untagged\)\); name one \(.*oci:DIR:@N"):
        await copy(f"oci:{tmp_path / 'layout'}", "local:localhost/picked:2", images, client)
    result = await copy(f"oci:{tmp_path / 'layout'}:@1", "local:localhost/picked:2", images, client)
    assert str(result.digest) == digests[1]

    with pytest.raises(ValueError, match="names a source's image by its place; name the image written with a tag"):
        await copy("local:localhost/picked:2", f"oci:{tmp_path / 'out'}:@0", images, client)
    assert not (tmp_path / "out").exists()


ASKED = web.AppKey("asked", list)


def foreign_layer_registry(image: SampleImage, served: bool) -> web.Application:
    """A registry holding ``a/b:1``, whose second layer is nondistributable: the registry
    has no copy of it; of its URLs, one is not HTTP, one answers 404 and the last serves
    it (when ``served``)."""
    blobs = {str(Digest.of(b)): b for b in (image.config, image.layers[0])}
    asked: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        if request.path == "/v2/":
            return web.json_response({})
        if request.path == "/v2/a/b/manifests/1":
            doc = json.loads(image.manifest)
            doc["layers"][1]["mediaType"] = OCI_LAYER_NONDISTRIBUTABLE_GZIP
            doc["layers"][1]["urls"] = ["ftp://example.invalid/layer", f"http://{request.host}/gone",
                                        f"http://{request.host}/windows/layer"]
            return web.Response(body=json.dumps(doc).encode(), content_type=doc["mediaType"])
        if request.path == "/windows/layer" and served:
            return web.Response(body=image.layers[1])
        data = blobs.get(request.path.rsplit("/", 1)[-1])
        if data is None or "/blobs/" not in request.path:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=data)

    app = web.Application()
    app[ASKED] = asked
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("served", [True, False])
async def test_a_foreign_layer_goes_into_a_docker_archive_from_its_urls_as_skopeo_writes_it(
    aiohttp_server: Any, images: ImageStore, client: RegistryClient, tmp_path: Path, served: bool
) -> None:
    # A docker archive holds every layer: a nondistributable one is fetched from the URLs
    # its descriptor names, in order (then the registry), as skopeo, Docker and containerd
    # fetch it. It failed with "blob ... is not in the local store" after the other blobs.
    image = simple_image(76, (30_000, 20_000))
    server = await aiohttp_server(foreign_layer_registry(image, served))
    archive = tmp_path / "out.tar"
    src = f"127.0.0.1:{server.port}/a/b:1"
    foreign = Digest.of(image.layers[1])
    if not served:
        with pytest.raises(BlobError, match=rf"nondistributable layer {foreign}: neither its urls nor "
                                            rf"127.0.0.1:{server.port}/a/b serve it \(ftp://"):
            await copy(src, f"docker-archive:{archive}:app:1", images, client)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]
        return
    await copy(src, "local:localhost/pulled:1", images, client)  # a pull leaves it at its urls
    with pytest.raises(ImageNotFound, match="a nondistributable layer is not pulled: copy the image from its registry"):
        await copy("local:localhost/pulled:1", f"docker-archive:{archive}:app:1", images, client)
    assert not archive.exists()
    await copy(src, f"docker-archive:{archive}:app:1", images, client)
    with tarfile.open(archive) as tar:
        layer = tar.extractfile(f"{foreign.encoded}/layer.tar")
        assert layer is not None and layer.read() == image.layers[1]
    asked = server.app[ASKED]
    assert asked.index("/gone") < asked.index("/windows/layer")
    assert not any(foreign.encoded in path for path in asked)  # its urls served it


async def test_every_platform_into_a_docker_archive_is_refused_before_any_blob_moves(
    pybuild_registry: str, images: ImageStore, images2: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # An archive holds one image, as skopeo refuses at once; the refusal came after every
    # platform's layers had been pulled.
    amd, arm = simple_image(77, (40_000,)), simple_image(78, (40_000,))
    ref = f"{pybuild_registry}/multi/app:1"
    for img in (amd, arm):
        for blob in (img.config, *img.layers, img.manifest):
            await images.store.put(blob)
    await images.put(ref, make_index([(amd, "amd64"), (arm, "arm64")]))
    await copy(f"local:{ref}", ref, images, client, all_platforms=True)
    with pytest.raises(LayoutError, match="a docker archive holds one image: copy one platform, not --all-platforms"):
        await copy(ref, f"docker-archive:{tmp_path / 'all.tar'}", images2, client, all_platforms=True)
    assert [await images2.store.stat(Digest.of(blob)) for blob in (*amd.layers, *arm.layers)] == [None, None]
    assert not list(tmp_path.glob("all.tar*"))
    await copy(ref, f"docker-archive:{tmp_path / 'arm.tar'}:app:1", images2, client, platform="linux/arm64")
    assert (tmp_path / "arm.tar").exists()


async def test_an_artifact_is_refused_for_a_docker_archive_before_any_blob_moves(
    pybuild_registry: str, images: ImageStore, images2: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # A Helm chart (config application/vnd.cncf.helm.config.v1+json) went into an archive
    # that docker load refuses ("invalid image JSON, no RootFS key"); skopeo refuses to
    # write it, as here.
    config, chart = b'{"name":"mychart","version":"0.1.0"}', b"chart" * 100
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "digest": str(Digest.of(chart)), "size": len(chart)}],
    }).encode()
    ref = f"{pybuild_registry}/charts/mychart:0.1.0"
    await store_image(images, ref, SampleImage(manifest, config, [chart]))
    await copy(f"local:{ref}", ref, images, client)
    with pytest.raises(LayoutError, match=r"is an artifact \(application/vnd\.cncf\.helm\.config\.v1\+json\), "
                                          r"not an image, and a docker archive holds images"):
        await copy(ref, f"docker-archive:{tmp_path / 'chart.tar'}:chart:1", images2, client)
    assert await images2.store.stat(Digest.of(chart)) is None
    assert not list(tmp_path.glob("chart.tar*"))
    result = await copy(ref, f"oci:{tmp_path / 'layout'}:0.1.0", images2, client)
    assert result.digest == Digest.of(manifest)
