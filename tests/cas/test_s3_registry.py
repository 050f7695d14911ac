"""``pybuild serve`` with its packs on a real RADOS Gateway: skopeo pushes and pulls
through it, the pieces are objects in the bucket, fsck is clean, and deleting an image
then running GC (online, from the CLI) gives bucket bytes back — by deleting whole packs
and by compacting a pack the remaining image still shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas.s3_location import S3Location
from testkit.ceph import RadosGateway
from testkit.clients import run, skopeo
from testkit.docker_engine import DockerEngine
from testkit.images import Layer, busybox_image, make_image, tar_files, write_docker_archive, write_oci_layout
from testkit.registries import RegistryProcess, _python_env, http, pybuild_argv
from testkit.rootfs import find_busybox, make_busybox_rootfs
from testkit.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _bucket_bytes(gw: RadosGateway, loc: S3Location) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in gw.client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def _plain_layer(files: dict[str, bytes]) -> Layer:
    tar = tar_files(files)
    return Layer(tar=tar, blob=tar, media_type="application/vnd.oci.image.layer.v1.tar")


def _pybuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True,
                          env=_python_env(None), timeout=300, check=False)


def test_serve_on_s3_push_pull_fsck_gc_compaction(radosgw: RadosGateway, s3_location: S3Location,
                                                   tmp_path: Path) -> None:
    require_tool("skopeo")
    shared = os.urandom(3 << 20)
    # Two images whose (uncompressed) layers hold the same file: content-defined pieces
    # of it are shared between them, across repositories.
    a = make_image([_plain_layer({"shared": shared, "only-a": os.urandom(9 << 20)})])
    b = make_image([_plain_layer({"shared": shared, "only-b": os.urandom(2 << 20)})])
    write_oci_layout(a, tmp_path / "a")
    write_oci_layout(b, tmp_path / "b")
    storage = tmp_path / "storage"
    base = pybuild_argv(storage)
    url = s3_location.to_url(keys=True)
    process = RegistryProcess("pybuild", lambda addr: [*base(addr), "--packs", url], storage=storage,
                              log=tmp_path / "registry.log", env=_python_env(None))
    with process as reg:
        for name in ("a", "b"):
            run(skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{tmp_path / name}:latest",
                       f"docker://{reg.ref(f's3/{name}', 'v1')}"))
        objects = _bucket_bytes(radosgw, s3_location)
        assert all(k.startswith(f"{s3_location.prefix}packs/") for k in objects)
        assert sum(objects.values()) >= len(a.layers[0].blob)
        assert not list(storage.glob("packs/*/*.pack"))  # nothing on local disk
        assert json.loads((storage / "packs.json").read_text())["bucket"] == s3_location.bucket

        run(skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                   f"docker://{reg.ref('s3/a', 'v1')}", f"oci:{tmp_path / 'pulled'}:a"))
        pulled = json.loads((tmp_path / "pulled" / "index.json").read_text())["manifests"][0]["digest"]
        assert pulled == a.manifest_digest
        assert (tmp_path / "pulled" / "blobs" / "sha256" / a.layers[0].digest[7:]).read_bytes() == a.layers[0].blob
        fsck = _pybuild("storage", "fsck", "--storage", str(storage))
        assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr

        # Delete image a (its manifest and blobs); b keeps the shared pieces alive.
        assert http(reg.addr, "DELETE", f"/v2/s3/a/manifests/{a.manifest_digest}").status == 202
        for digest in a.blobs():
            assert http(reg.addr, "DELETE", f"/v2/s3/a/blobs/{digest}").status == 202
        before = sum(_bucket_bytes(radosgw, s3_location).values())
        gc = _pybuild("storage", "gc", "--grace", "0", "--json", "--storage", str(storage))
        assert gc.returncode == 0, gc.stderr
        report = json.loads(gc.stdout)
        assert report["bytes_compacted"] >= 8 << 20  # a's own bytes, cut out of the shared pack
        after = sum(_bucket_bytes(radosgw, s3_location).values())
        assert after <= before - (8 << 20)

        # The server (its segment lists now stale) still serves b whole.
        run(skopeo("copy", "--preserve-digests", "--src-tls-verify=false",
                   f"docker://{reg.ref('s3/b', 'v1')}", f"oci:{tmp_path / 'pulled'}:b"))
        layer = http(reg.addr, "GET", f"/v2/s3/b/blobs/{b.layers[0].digest}")
        assert layer.status == 200 and layer.body == b.layers[0].blob
        fsck = _pybuild("storage", "fsck", "--storage", str(storage))
        assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr


def test_docker_push_rmi_pull_run_through_serve_on_s3(docker_engine: DockerEngine, radosgw: RadosGateway,
                                                      s3_location: S3Location, tmp_path: Path) -> None:
    if find_busybox() is None:
        require_tool("/bin/busybox")
    image = busybox_image(make_busybox_rootfs(tmp_path / "rootfs"))
    tag = f"pybuild-s3/busybox:{tmp_path.name.lower()[-20:]}"
    archive = write_docker_archive(image, tmp_path / "busybox.tar", repo_tags=[tag])
    storage = tmp_path / "storage"
    base = pybuild_argv(storage)
    process = RegistryProcess("pybuild", lambda addr: [*base(addr), "--packs", s3_location.to_url(keys=True)],
                              storage=storage, log=tmp_path / "registry.log", env=_python_env(None))
    with process as reg:
        remote = reg.ref("s3/busybox", "v1")
        try:
            docker_engine.run("load", "-i", str(archive))
            docker_engine.run("tag", tag, remote)
            docker_engine.run("push", remote)
            assert sum(_bucket_bytes(radosgw, s3_location).values()) > 0
            docker_engine.run("rmi", "--force", tag, remote)
            assert "Digest: sha256:" in docker_engine.run("pull", remote).stdout
            assert docker_engine.run_container(remote, "echo", "from s3") == "from s3\n"
        finally:
            docker_engine.run("rmi", "--force", tag, remote, check=False)
        fsck = _pybuild("storage", "fsck", "--storage", str(storage))
        assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr


def test_serve_names_a_missing_bucket(radosgw: RadosGateway, s3_location: S3Location, tmp_path: Path) -> None:
    bad = S3Location(s3_location.endpoint, "missing-bucket", "", s3_location.access_key,
                     s3_location.secret_key, secure=False)
    out = _pybuild("storage", "init", "--storage", str(tmp_path / "s"), "--packs", bad.to_url(keys=True))
    assert out.returncode == 1
    assert "S3 bucket 'missing-bucket' does not exist at http://" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "s" / "packs.json").exists()


def test_the_packs_setting_comes_from_the_config_file_env_or_flag(tmp_path: Path) -> None:
    from registry.server.config import ConfigError, load_config

    file = tmp_path / "registry.yaml"
    file.write_text("packs: s3://AK:SK@127.0.0.1:7480/bucket-x/reg?secure=false\n")
    config = load_config(file, environ={})
    assert config.packs == S3Location("127.0.0.1:7480", "bucket-x", "reg/", "AK", "SK", secure=False)
    env = {"PYBUILD_PACKS": "s3://s3.example/bucket-y", "AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "S"}
    assert load_config(None, environ=env).packs is not None
    flagged = load_config(None, {"packs": "s3://h:1/bucket-z"}, environ={})
    assert flagged.packs is not None and flagged.packs.bucket == "bucket-z"
    assert load_config(None, environ={}).packs is None
    with pytest.raises(ConfigError, match="--packs: packs: S3 location 's3://k:\\*\\*\\*@h/bucket-z") as info:
        load_config(None, {"packs": "s3://k:TOPSECRET@h/bucket-z?colour=red"}, environ={})
    assert "unknown option(s) colour" in str(info.value) and "TOPSECRET" not in str(info.value)


def test_distribution_storage_s3_keys_name_the_packs() -> None:
    from registry.server.config import ConfigError, distribution_s3, load_config

    keys = {"accesskey": "AK", "secretkey": "SK", "region": "eu-1", "regionendpoint": "http://127.0.0.1:7480",
            "bucket": "dist-bucket", "rootdirectory": "/registry", "chunksize": 10485760}
    packs = distribution_s3(keys, "config.yml")
    assert packs == S3Location("127.0.0.1:7480", "dist-bucket", "registry/", "AK", "SK", "eu-1",
                               secure=False, part_size=10 << 20)
    assert load_config(None, {"packs": packs}, environ={}).packs == packs  # the setting takes it
    # tuning of the driver's server-side copies, which pybuild does not make: accepted
    assert distribution_s3({"bucket": "dist-bucket", "multipartcopychunksize": 1}, "config.yml").bucket == "dist-bucket"
    with pytest.raises(ConfigError, match="storage.s3: unsupported key.s. sessiontoken"):
        distribution_s3({"bucket": "dist-bucket", "sessiontoken": "x"}, "config.yml")
    with pytest.raises(ConfigError, match="storage.s3.bucket is required"):
        distribution_s3({"region": "eu-1"}, "config.yml")
    with pytest.raises(ConfigError, match="storage.s3.secure must be true or false"):
        distribution_s3({"bucket": "dist-bucket", "secure": "maybe"}, "config.yml")


def test_serve_on_s3_sends_a_hot_blob_from_its_piece_cache(radosgw: RadosGateway, s3_location: S3Location,
                                                            tmp_path: Path) -> None:
    import hashlib

    blob = os.urandom(12 << 20)
    digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
    storage = tmp_path / "storage"
    base = pybuild_argv(storage)
    url = s3_location.to_url(keys=True)
    env = {**_python_env(None), "PYBUILD_CACHE_PIECES_BYTES": str(64 << 20)}
    process = RegistryProcess("pybuild", lambda addr: [*base(addr), "--packs", url], storage=storage,
                              log=tmp_path / "registry.log", env=env)
    with process as reg:
        put = http(reg.addr, "POST", f"/v2/hot/blobs/uploads/?digest={digest}", body=blob,
                   headers={"Content-Type": "application/octet-stream"})
        assert put.status == 201, put.body
        first = http(reg.addr, "GET", f"/v2/hot/blobs/{digest}")
        assert first.status == 200 and first.body == blob
        # The replica writes the pieces to its cache behind the GET.
        for _ in range(600):
            cached = list((storage / "cache" / "pieces").glob("*/*"))
            if sum(p.stat().st_size for p in cached if ".tmp" not in p.name) == len(blob):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the piece cache holds {len(cached)} files, not the whole blob")
        # With the pack objects gone from the bucket, the blob still comes whole: from the
        # replica's local files.
        client = radosgw.client()
        keys = list(_bucket_bytes(radosgw, s3_location))
        assert keys
        for key in keys:
            client.delete_object(Bucket=s3_location.bucket, Key=key)
        second = http(reg.addr, "GET", f"/v2/hot/blobs/{digest}")
        assert second.status == 200 and second.body == blob
        part = http(reg.addr, "GET", f"/v2/hot/blobs/{digest}", headers={"Range": "bytes=1000-5000999"})
        assert part.status == 206 and part.body == blob[1000:5001000]


def test_storage_redirect_sends_a_blob_that_is_one_object_to_a_presigned_url(
        radosgw: RadosGateway, s3_location: S3Location, tmp_path: Path) -> None:
    import hashlib
    import http.client as httpc
    import urllib.request

    from registry.server.config import load_config

    assert load_config(None, environ={"PYBUILD_STORAGE_REDIRECT": "true"}).storage_redirect
    assert not load_config(None, environ={}).storage_redirect
    one = os.urandom(3 << 20)  # one upload, one seal: one object in the bucket
    text = b"compressible " * 300_000  # zstd-compressed pieces: not the blob's bytes as stored
    storage = tmp_path / "storage"
    base = pybuild_argv(storage)
    url = s3_location.to_url(keys=True)
    env = {**_python_env(None), "PYBUILD_STORAGE_REDIRECT": "true"}
    process = RegistryProcess("pybuild", lambda addr: [*base(addr), "--packs", url], storage=storage,
                              log=tmp_path / "registry.log", env=env)
    with process as reg:
        digests = []
        for blob in (one, text):
            digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
            put = http(reg.addr, "POST", f"/v2/r/blobs/uploads/?digest={digest}", body=blob)
            assert put.status == 201, put.body
            digests.append(digest)
        host, port = reg.addr.rsplit(":", 1)

        def get(digest: str, headers: dict[str, str], method: str = "GET") -> tuple[int, dict[str, str], bytes]:
            conn = httpc.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.request(method, f"/v2/r/blobs/{digest}", headers=headers)
                resp = conn.getresponse()
                return resp.status, dict(resp.getheaders()), resp.read()
            finally:
                conn.close()

        status, headers, _ = get(digests[0], {})
        assert status == 307
        location = headers.get("Location", "")
        assert headers.get("Docker-Content-Digest") == digests[0]
        assert location.startswith(f"http://{s3_location.endpoint}/{s3_location.bucket}/") and "Signature" in location
        with urllib.request.urlopen(location, timeout=30) as direct:
            assert direct.read() == one
        # HEAD too, as Distribution redirects it: to a URL signed for HEAD, which S3 answers
        # with the blob's length (a URL signed for GET would be refused).
        status, headers, _ = get(digests[0], {}, method="HEAD")
        assert status == 307 and headers.get("Docker-Content-Digest") == digests[0]
        head = urllib.request.Request(headers["Location"], method="HEAD")
        with urllib.request.urlopen(head, timeout=30) as direct:
            assert int(direct.headers["Content-Length"]) == len(one)
        # A GET of one range is redirected too, as Distribution redirects it: the client
        # sends its Range on to the bucket, which answers exactly those bytes.
        for spec, want in (("bytes=0-9", one[:10]), ("bytes=1000-2000999", one[1000:2001000]),
                           ("bytes=-7", one[-7:]), (f"bytes={len(one) - 5}-", one[-5:])):
            status, headers, _ = get(digests[0], {"Range": spec})
            assert status == 307, spec
            ranged = urllib.request.Request(headers["Location"], headers={"Range": spec})
            with urllib.request.urlopen(ranged, timeout=30) as direct:
                assert direct.status == 206 and direct.read() == want, spec
        # Several ranges (S3 would answer the whole object), a range under If-Range (S3
        # would compare its own ETag), and blobs not stored as one object, are answered by
        # the replica.
        status, headers, body = get(digests[0], {"Range": "bytes=0-9,20-29"})
        assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
        status, _, body = get(digests[0], {"Range": "bytes=0-9", "If-Range": f'"{digests[0]}"'})
        assert status == 206 and body == one[:10]
        status, headers, _ = get(digests[1], {}, method="HEAD")
        assert status == 200 and int(headers["Content-Length"]) == len(text)
        status, _, body = get(digests[1], {})
        assert status == 200 and body == text
        # Sent as docker, skopeo and podman send a layer: POST, one PATCH with every byte,
        # then a PUT without a body. Random bytes (no gzip trailer to end the last piece
        # when the PATCH ends): the PATCH's checkpoint seals the pieces with the tail the
        # cutter holds back, so the commit adds no object and the blob is redirected.
        raw = os.urandom(3 << 20)
        digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
        post = http(reg.addr, "POST", "/v2/r/blobs/uploads/")
        assert post.status == 202
        upload = post.headers["location"]
        patch = http(reg.addr, "PATCH", upload, body=raw,
                     headers={"Content-Type": "application/octet-stream"})
        assert patch.status == 202, patch.body
        sep = "&" if "?" in patch.headers["location"] else "?"
        put = http(reg.addr, "PUT", f"{patch.headers['location']}{sep}digest={digest}")
        assert put.status == 201, put.body
        status, headers, _ = get(digest, {})
        assert status == 307
        with urllib.request.urlopen(headers["Location"], timeout=30) as direct:
            assert direct.read() == raw
