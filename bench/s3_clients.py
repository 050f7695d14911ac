"""Which S3 client the S3 pack backend uses: ``python3 -m bench.s3_clients``.

Starts a private radosgw (``testkit.ceph``) and measures, for each candidate client
(obstore, boto3, minio), in the same run against the same gateway:

- ranged-GET latency: 256 KiB ranges at random offsets of a 64 MiB object, one after
  another (the median; a piece read is one such GET);
- ranged-GET throughput: 4 MiB ranges, one thread and four threads;
- PUT throughput: a 64 MiB object in one PUT, and by multipart upload (8 MiB parts).

Three rounds interleave the clients; each metric keeps its best round. Prints one table
(rows: metrics, columns: clients). Needs root and Debian's ceph packages.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from testkit.ceph import RadosGateway, S3Credentials

MiB = 1 << 20
OBJECT = 64 * MiB
SMALL = 256 * 1024
BIG = 4 * MiB
PART = 8 * MiB
ROUNDS = 3


class Client:
    name = ""

    def put(self, key: str, data: bytes) -> None: ...
    def put_multipart(self, key: str, data: bytes) -> None: ...
    def get_range(self, key: str, start: int, length: int) -> bytes: ...


class Boto3(Client):
    name = "boto3"

    def __init__(self, c: S3Credentials, bucket: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.s3 = boto3.client("s3", endpoint_url=c.endpoint, aws_access_key_id=c.access_key,
                               aws_secret_access_key=c.secret_key, region_name=c.region,
                               config=Config(max_pool_connections=16,
                                             retries={"mode": "standard", "max_attempts": 5}))

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_multipart(self, key: str, data: bytes) -> None:
        up = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        parts = []
        for i in range(0, len(data), PART):
            r = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=up["UploadId"],
                                    PartNumber=i // PART + 1, Body=data[i : i + PART])
            parts.append({"PartNumber": i // PART + 1, "ETag": r["ETag"]})
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=up["UploadId"],
                                          MultipartUpload={"Parts": parts})

    def get_range(self, key: str, start: int, length: int) -> bytes:
        r = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
        return bytes(r["Body"].read())


class Minio(Client):
    name = "minio"

    def __init__(self, c: S3Credentials, bucket: str) -> None:
        import minio

        self.bucket = bucket
        self.m = minio.Minio(c.endpoint.removeprefix("http://"), access_key=c.access_key,
                             secret_key=c.secret_key, region=c.region, secure=False)

    def put(self, key: str, data: bytes) -> None:
        self.m.put_object(self.bucket, key, io.BytesIO(data), len(data), part_size=len(data) + 1)

    def put_multipart(self, key: str, data: bytes) -> None:
        self.m.put_object(self.bucket, key, io.BytesIO(data), len(data), part_size=PART)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        r = self.m.get_object(self.bucket, key, offset=start, length=length)
        try:
            return bytes(r.read())
        finally:
            r.close()
            r.release_conn()


class Obstore(Client):
    name = "obstore"

    def __init__(self, c: S3Credentials, bucket: str) -> None:
        import obstore
        from obstore.store import S3Store

        self.obs = obstore
        self.store = S3Store(bucket, endpoint=c.endpoint, access_key_id=c.access_key,
                             secret_access_key=c.secret_key, region=c.region,
                             virtual_hosted_style_request=False,
                             client_options={"allow_http": True})

    def put(self, key: str, data: bytes) -> None:
        self.obs.put(self.store, key, data, use_multipart=False)

    def put_multipart(self, key: str, data: bytes) -> None:
        self.obs.put(self.store, key, io.BytesIO(data), use_multipart=True, chunk_size=PART,
                     max_concurrency=4)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return bytes(self.obs.get_range(self.store, key, start=start, length=length))


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(client: Client, data: bytes, quick: bool) -> dict[str, float]:
    rnd = random.Random(1)
    key = f"bench/{client.name}"
    res: dict[str, float] = {}
    puts = _timed(lambda: client.put(key, data), 2 if quick else 4)
    res["PUT 64 MiB, MB/s"] = OBJECT / min(puts) / 1e6
    mp = _timed(lambda: client.put_multipart(key + ".mp", data), 2 if quick else 4)
    res["multipart PUT 64 MiB (8 MiB parts), MB/s"] = OBJECT / min(mp) / 1e6
    assert client.get_range(key + ".mp", OBJECT - 10, 10) == data[-10:]
    n = 50 if quick else 300

    def small() -> None:
        at = rnd.randrange(0, OBJECT - SMALL)
        assert len(client.get_range(key, at, SMALL)) == SMALL

    lat = _timed(small, n)
    res["ranged GET 256 KiB, median ms"] = statistics.median(lat) * 1e3
    res["ranged GET 256 KiB, p90 ms"] = statistics.quantiles(lat, n=10)[-1] * 1e3
    big_one = _timed(lambda: [client.get_range(key, i, BIG) for i in range(0, OBJECT, BIG)], 2 if quick else 4)
    res["ranged GET 4 MiB, 1 thread, MB/s"] = OBJECT / min(big_one) / 1e6
    with ThreadPoolExecutor(4) as pool:
        big_four = _timed(lambda: list(pool.map(lambda i: client.get_range(key, i, BIG), range(0, OBJECT, BIG))),
                          2 if quick else 4)
    res["ranged GET 4 MiB, 4 threads, MB/s"] = OBJECT / min(big_four) / 1e6
    return res


def main() -> None:
    quick = "--quick" in sys.argv
    data = os.urandom(OBJECT)
    with RadosGateway() as creds:
        import boto3

        boto3.client("s3", endpoint_url=creds.endpoint, aws_access_key_id=creds.access_key,
                     aws_secret_access_key=creds.secret_key, region_name=creds.region
                     ).create_bucket(Bucket="bench")
        clients = [cls(creds, "bench") for cls in (Obstore, Boto3, Minio)]
        results: dict[str, dict[str, float]] = {}
        # Rounds interleave the clients, so a busy spell of the machine hits all of them;
        # each metric keeps its best round (lowest latency, highest throughput).
        for _ in range(1 if quick else ROUNDS):
            for client in clients:
                got = measure(client, data, quick)
                best = results.setdefault(client.name, got)
                for k, v in got.items():
                    best[k] = min(best[k], v) if k.endswith(" ms") else max(best[k], v)
    names = list(results)
    rows = list(results[names[0]])
    width = max(map(len, rows))
    print(f"{'':{width}}  " + "  ".join(f"{n:>9}" for n in names))
    for row in rows:
        print(f"{row:{width}}  " + "  ".join(f"{results[n][row]:9.1f}" for n in names))


if __name__ == "__main__":
    main()
