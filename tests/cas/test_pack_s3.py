"""Packs in S3 (cas.pack_s3) on a real RADOS Gateway: what the shared pack suite
(test_packs.py) cannot say — multipart uploads, compaction, errors that name the fix,
retries, and a whole store on S3 (put, read, delete, GC with compaction, fsck)."""

from __future__ import annotations

import http.client
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from cas import Digest, StoreConfig
from cas.errors import StorageError
from cas.open import open_store
from cas.pack_s3 import S3Packs, S3StorageError
from cas.pack_select import open_packs
from cas.s3_location import S3Location, S3LocationError
from testkit.ceph import BUCKET, RadosGateway


def _objects(gw: RadosGateway, loc: S3Location) -> dict[str, int]:
    """Every object under the location's prefix, seen through an independent client."""
    out: dict[str, int] = {}
    pages = gw.client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix)
    for page in pages:
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


# -- locations ---------------------------------------------------------------------------


def test_location_url_round_trip_and_keys_from_the_environment() -> None:
    loc = S3Location.parse("s3://AK:S%2Fk@127.0.0.1:7480/bucket-a/some/prefix?secure=false&region=eu-1")
    assert (loc.endpoint, loc.bucket, loc.prefix, loc.region, loc.secure) == (
        "127.0.0.1:7480", "bucket-a", "some/prefix/", "eu-1", False)
    assert (loc.access_key, loc.secret_key) == ("AK", "S/k")
    assert loc.url == "http://127.0.0.1:7480"
    assert S3Location.parse(loc.to_url(keys=True)) == loc
    assert "S/k" not in repr(loc) and "S/k" not in str(loc)
    env = {"AWS_ACCESS_KEY_ID": "EK", "AWS_SECRET_ACCESS_KEY": "ES"}
    from_env = S3Location.parse("s3://s3.example/bkt", env)
    assert (from_env.access_key, from_env.secret_key, from_env.secure, from_env.prefix) == ("EK", "ES", True, "")


@pytest.mark.parametrize("url, says", [
    ("http://h/b", "not an S3 location"),
    ("s3://h/b", "bucket name 'b' is not valid"),
    ("s3://h/bucket?colour=red", "unknown option(s) colour"),
    ("s3://h/bucket?secure=maybe", "secure='maybe'"),
    ("s3://h/bucket?part_size=1000", "below S3's minimum"),
])
def test_bad_locations_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(S3LocationError) as info:
        S3Location.parse(url, {})
    assert says in str(info.value)


# -- errors ------------------------------------------------------------------------------


def test_a_missing_bucket_is_named_with_the_fix(s3_location: S3Location) -> None:
    loc = S3Location(s3_location.endpoint, "no-such-bucket", "", s3_location.access_key,
                     s3_location.secret_key, secure=False)
    with pytest.raises(S3StorageError) as info:
        S3Packs(loc)
    assert "S3 bucket 'no-such-bucket' does not exist at http://" in str(info.value)
    assert "create it" in str(info.value)
    # the command it names exists (radosgw-admin has no `bucket create`)
    assert f"'aws --endpoint-url http://{s3_location.endpoint} s3 mb s3://no-such-bucket'" in str(info.value)
    assert "radosgw-admin" not in str(info.value)
    assert isinstance(info.value, StorageError)


@pytest.mark.parametrize("access, secret", [("", ""), ("AKID", "")])
def test_missing_keys_are_named_with_where_to_give_them(access: str, secret: str) -> None:
    loc = S3Location("127.0.0.1:1", BUCKET, "p/", access, secret, secure=False)
    with pytest.raises(S3StorageError) as info:
        S3Packs(loc)
    assert f"no S3 keys for bucket '{BUCKET}' at http://127.0.0.1:1" in str(info.value)
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(info.value)


def test_refused_keys_are_named(s3_location: S3Location) -> None:
    for access, secret in ((s3_location.access_key, "wrong"), ("NOSUCHKEY", "wrong")):
        loc = S3Location(s3_location.endpoint, BUCKET, "", access, secret, secure=False)
        with pytest.raises(S3StorageError) as info:
            S3Packs(loc)
        assert f"refused the keys for bucket '{BUCKET}'" in str(info.value)
        assert "check the access key and secret key" in str(info.value)


def test_an_unreachable_endpoint_is_named(s3_location: S3Location) -> None:
    from testkit.registries import free_port

    loc = S3Location(f"127.0.0.1:{free_port()}", BUCKET, "", "a", "b", secure=False)
    import cas.pack_s3

    saved = cas.pack_s3.RETRY
    cas.pack_s3.RETRY = {"max_retries": 1}
    try:
        with pytest.raises(S3StorageError, match="cannot be reached"):
            S3Packs(loc)
    finally:
        cas.pack_s3.RETRY = saved


# -- multipart, compaction, retries -----------------------------------------------------


def test_a_large_segment_goes_up_by_multipart_and_reads_back(radosgw: RadosGateway,
                                                             s3_location: S3Location) -> None:
    packs = S3Packs(s3_location)
    w = packs.create("aa11")
    data = os.urandom(13 << 20)  # part size is 5 MiB: three parts
    offsets = []
    for i in range(0, len(data), 1 << 20):
        offsets += w.append_many([data[i : i + (1 << 20)]])
        # Bounded memory: full parts go to the multipart upload as they fill.
        assert len(w._buf) < s3_location.part_size  # held here; the upload holds the rest
    assert offsets[-1] == 12 << 20
    w.sync()
    head = radosgw.client().head_object(Bucket=BUCKET, Key=packs.key("aa11", 0))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    assert packs.read("aa11", (5 << 20) - 7, 100) == data[(5 << 20) - 7 : (5 << 20) + 93]
    assert packs.size("aa11") == len(data)


def test_a_replica_that_listed_a_pack_earlier_still_signs_its_newer_segments(
        s3_location: S3Location) -> None:
    # Replicas share packs: one writes segment after segment into a pack that another
    # listed before the newest was sealed. That one must not call the newest "not one
    # object" from its old list (its blob GETs would stream instead of redirecting).
    writer, other = S3Packs(s3_location), S3Packs(s3_location)
    w = writer.create("bb22")
    w.append(b"first segment")
    w.sync()
    assert other.read("bb22", 0, 5) == b"first"  # the other replica lists the pack now
    start = w.append(b"second segment, sealed later")
    w.sync()
    url = other.presign("bb22", start, 28, 60)
    assert url is not None and "X-Amz-Signature=" in url
    # Within what it has listed, a range that is no one object is still refused.
    assert other.presign("bb22", 0, 5, 60) is None
    assert other.presign("bb22", start, 27, 60) is None


def test_compaction_gives_space_back_and_keeps_live_bytes_for_a_stale_reader(
        radosgw: RadosGateway, s3_location: S3Location) -> None:
    writer_side, reader_side = S3Packs(s3_location), S3Packs(s3_location)  # two processes
    w = writer_side.create("cc33")
    blocks = [os.urandom(1 << 20) for _ in range(8)]
    offsets = w.append_many(blocks)
    w.sync()
    tail = w.append(b"second segment")
    w.sync()
    live = [(0, 4096), (offsets[1], 1 << 20), (offsets[6], 1 << 20), (tail, 14)]
    for at, n in live:
        assert reader_side.read("cc33", at, n)  # the reader caches the segment list
    before = writer_side.allocated()
    freed = writer_side.compact("cc33", live, min_live=0.5)
    # The first segment keeps 4 KiB and two of its eight MiB (three objects now, the
    # first one under the old key, shorter); the second segment is all live.
    assert freed == (6 << 20) - 4096
    assert len(_objects(radosgw, s3_location)) == 4
    assert writer_side.allocated() == before - freed
    assert sum(_objects(radosgw, s3_location).values()) == before - freed
    assert reader_side.read("cc33", offsets[1], 1 << 20) == blocks[1]
    assert reader_side.read("cc33", offsets[6], 1 << 20) == blocks[6]
    assert reader_side.read("cc33", tail, 14) == b"second segment"
    assert reader_side.read("cc33", 0, 4096) == blocks[0][:4096]
    assert writer_side.compact("cc33", live, min_live=0.5) == 0  # nothing more to give


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Forwards to the gateway, answering 503 to the first ``fail`` requests whose
    method is in ``methods``."""

    upstream = ""
    fail = 0
    methods: ClassVar[tuple[str, ...]] = ("GET",)
    seen: ClassVar[list[int]] = []

    def _forward(self) -> None:
        if self.command in _Flaky.methods and _Flaky.fail > 0:
            _Flaky.fail -= 1
            _Flaky.seen.append(503)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(_Flaky.upstream)
        try:
            conn.request(self.command, self.path, body, dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        _Flaky.seen.append(resp.status)
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_gateway(s3_location: S3Location) -> Iterator[S3Location]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    _Flaky.upstream = s3_location.endpoint
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield S3Location(f"127.0.0.1:{server.server_address[1]}", s3_location.bucket, s3_location.prefix,
                         s3_location.access_key, s3_location.secret_key, secure=False)
    finally:
        server.shutdown()
        server.server_close()


def test_reads_are_retried_through_server_errors(flaky_gateway: S3Location) -> None:
    packs = S3Packs(flaky_gateway)
    w = packs.create("dd44")
    w.append(b"survives two 503s")
    w.sync()
    _Flaky.fail, _Flaky.seen, _Flaky.methods = 2, [], ("GET",)
    assert packs.read("dd44", 0, 17) == b"survives two 503s"
    assert _Flaky.seen == [503, 503, 206]


def test_a_failed_seal_fails_the_writer_and_the_pack_resumes_from_its_last_sync(
        flaky_gateway: S3Location, monkeypatch: pytest.MonkeyPatch) -> None:
    import cas.pack_s3

    monkeypatch.setattr(cas.pack_s3, "RETRY", {"max_retries": 2})
    packs = S3Packs(flaky_gateway)
    w = packs.create("ee55")
    w.append(b"checkpointed")
    w.sync()
    w.append(b" lost")
    _Flaky.fail, _Flaky.seen, _Flaky.methods = 100, [], ("PUT",)
    with pytest.raises(S3StorageError, match="while sealing pack ee55"):
        w.sync()
    assert _Flaky.seen == [503, 503, 503]  # the first try and two retries
    with pytest.raises(S3StorageError):
        w.append(b"more")  # the writer stays failed
    _Flaky.fail = 0
    w2 = packs.open_append("ee55", 12)
    w2.append(b" resumed")
    w2.sync()
    assert packs.read("ee55", 0, 20) == b"checkpointed resumed"


# -- a store on S3 -----------------------------------------------------------------------


async def test_store_on_s3_round_trip_gc_compaction_fsck(radosgw: RadosGateway, s3_location: S3Location,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "store"
    x, y, z = os.urandom(12 << 20), os.urandom(4 << 20), os.urandom(4 << 20)
    async with await open_store(StoreConfig.at(root).with_packs_in(s3_location)) as store:
        a = await store.put(x + y)
        b = await store.put(y + z)
        await store.link("repo", a.digest)
        await store.link("repo", b.digest)
        assert await store.read_bytes(b.digest) == y + z
        assert not list((root / "packs").glob("*/*.pack")) if (root / "packs").exists() else True
        in_bucket = sum(_objects(radosgw, s3_location).values())
        assert in_bucket >= 16 << 20  # x and y once each (and the part of z b added)
        # A second handle on the same store (another process: `pybuild storage gc`).
        async with await open_store(StoreConfig.at(root)) as other:
            assert await other.read_bytes(a.digest) == x + y  # found through packs.json
            assert await other.delete(a.digest)
            report = await other.gc(grace=0)
        assert report.pieces_removed > 0  # x's pieces (delete took the blob itself)
        assert report.bytes_compacted >= 10 << 20  # most of x went with a
        assert sum(_objects(radosgw, s3_location).values()) <= in_bucket - (10 << 20)
        # The first handle cached the old segments; it still reads b (y lives on).
        assert await store.read_bytes(b.digest) == y + z
        fsck = await store.fsck()
        assert fsck.ok, fsck.problems
        assert Digest.of(y + z) == b.digest


async def test_a_store_directory_keeps_to_its_packs(s3_location: S3Location, tmp_path: Path) -> None:
    root = tmp_path / "store"
    async with await open_store(StoreConfig.at(root).with_packs_in(s3_location)):
        pass
    assert (root / "packs.json").stat().st_mode & 0o777 == 0o600
    assert isinstance(open_packs(root), S3Packs)
    elsewhere = S3Location(s3_location.endpoint, BUCKET, "other/", s3_location.access_key,
                           s3_location.secret_key, secure=False)
    with pytest.raises(S3LocationError, match="keeps its packs in s3://"):
        open_packs(root, s3=elsewhere)
    disk = tmp_path / "disk"
    async with await open_store(StoreConfig.at(disk)) as store:
        await store.put(os.urandom(100_000))
    with pytest.raises(S3LocationError, match="keeps its packs on disk"):
        open_packs(disk, s3=s3_location)
    # A second store on the first one's prefix would have its GC delete the first's packs.
    async with await open_store(StoreConfig.at(root)) as store:
        await store.put(os.urandom(100_000))
    with pytest.raises(S3LocationError, match="already holds the packs of another store"):
        open_packs(tmp_path / "second", s3=s3_location, known=lambda name: False)
    assert not (tmp_path / "second" / "packs.json").exists()
    # A replica of the same store (its metadata shared, so it knows the packs) may.
    from cas.sqlite_meta import SqliteMetadata

    replica = StoreConfig(tmp_path / "replica", metadata=lambda _root: SqliteMetadata(root / "meta.db"),
                          s3=s3_location)
    async with await open_store(replica) as store:
        assert len(await store.linked("nobody")) == 0
    assert (tmp_path / "replica" / "packs.json").exists()


async def test_gc_compact_all_reaches_packs_a_crashed_gc_freed(s3_location: S3Location, tmp_path: Path) -> None:
    root = tmp_path / "store"
    x, y = os.urandom(12 << 20), os.urandom(4 << 20)
    async with await open_store(StoreConfig.at(root).with_packs_in(s3_location)) as store:
        a = await store.put(x + y)
        b = await store.put(y)
        await store.link("repo", b.digest)
        assert await store.delete(a.digest)
        # A GC that freed x's pieces and died before compacting: its notes died with it.
        core = store.core
        while (await store.core.run(core.meta.collect_pieces))[0]:
            pass
        await core.run(core.empty_trash)
    async with await open_store(StoreConfig.at(root)) as store:
        assert (await store.gc(grace=0)).bytes_compacted == 0  # this process freed nothing
        report = await store.gc(grace=0, compact_all=True)
        assert report.bytes_compacted >= 10 << 20
        assert await store.read_bytes(b.digest) == y
        assert (await store.fsck()).ok
