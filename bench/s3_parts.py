"""Does the multipart part size of an object change how fast radosgw serves it?
``python3 -m bench.s3_parts [--mib 1024] [--rounds 9] [PART_MIB ...]``.

A redirected blob GET (``storage_redirect``) is one GET of one object from the bucket,
for pybuild as for CNCF Distribution; only how the object was written differs:
pybuild's S3 pack writer uploads in parts of ``part_size`` (8 MiB by default),
Distribution's s3 driver moves a blob into place with a server-side copy in 32 MiB
parts. This starts a private radosgw (``testkit.ceph``), writes one object of ``--mib``
MiB of random bytes per part size with pybuild's writer (``cas.pack_s3``), then GETs
their presigned URLs with ``curl``, alternately, ``--rounds`` times each, and prints each
part size's median and all its rounds in MB/s. Needs root and Debian's ceph packages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from cas.pack_s3 import S3Packs
from cas.s3_location import S3Location
from testkit.ceph import RadosGateway

BUCKET = "bench-parts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("parts", type=int, nargs="*", default=[8, 32, 64], help="part sizes, MiB")
    args = parser.parse_args()
    gw = RadosGateway(memstore_bytes=(len(args.parts) * args.mib + 1024) << 20)
    creds = gw.start()
    try:
        gw.create_bucket(BUCKET)
        data = os.urandom(args.mib << 20)
        urls: dict[int, str] = {}
        for mib in args.parts:
            loc = S3Location(creds.endpoint.removeprefix("http://"), BUCKET, f"p{mib}/", creds.access_key,
                             creds.secret_key, creds.region, secure=False, part_size=mib << 20)
            packs = S3Packs(loc)
            writer = packs.create(f"p{mib}")
            start = time.perf_counter()
            for i in range(0, len(data), 1 << 20):
                writer.append_many([data[i : i + (1 << 20)]])
            writer.sync()
            print(f"{mib:3d} MiB parts: written at {len(data) / 1e6 / (time.perf_counter() - start):,.0f} MB/s",
                  flush=True)
            url = packs.presign(f"p{mib}", 0, len(data), 3600)
            assert url is not None
            urls[mib] = url
        del data
        speeds: dict[int, list[float]] = {mib: [] for mib in args.parts}
        for _ in range(args.rounds):
            for mib in args.parts:
                out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download}", urls[mib]],
                                     capture_output=True, text=True, check=True).stdout
                speeds[mib].append(float(out) / 1e6)
        for mib in args.parts:
            rounds = ", ".join(f"{s:,.0f}" for s in sorted(speeds[mib]))
            print(f"{mib:3d} MiB parts: GET median {statistics.median(speeds[mib]):,.0f} MB/s ({rounds})")
    finally:
        gw.stop()


if __name__ == "__main__":
    main()
