"""What a checkpoint of an upload costs when its tail lives in PostgreSQL (a shared
store: packs in S3, replicas with directories of their own) instead of in a local file
(the single-node store).

    python3 -m bench.ingest_tails [--rounds 40]

Starts a throw-away PostgreSQL (testkit.postgres; it runs with ``fsync=off``, so the
database side is cheaper than on a durable server) and, for tails of 100 KB and 1 MiB
(the default largest piece, the most a tail holds), times ``rounds`` checkpoints each
way: a tail file written and fsynced, then ``PgMetadata.checkpoint`` (the single-node
order, here with PostgreSQL metadata); ``PgMetadata.checkpoint_with_tail`` (one
transaction); and ``ingest_tail`` (what a resume reads). Two rounds of each interleave;
medians and minima in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cas.pg_meta import PgMetadata
from testkit.postgres import postgres_server


def _file_checkpoint(meta: PgMetadata, root: Path, ingest: str, i: int, tail: bytes) -> None:
    path = root / f"{ingest}.{i}.tail"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(tail)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    meta.checkpoint(ingest, [], i, 0, 0, len(tail))
    path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    with postgres_server() as server, tempfile.TemporaryDirectory() as d:
        meta = PgMetadata(server.create_database("tails"), migrate=True)
        try:
            print("| tail | tail file + checkpoint | checkpoint_with_tail | ingest_tail (resume) |")
            print("|---|---|---|---|")
            for size in (100_000, 1 << 20):
                tail = os.urandom(size)
                ingest = meta.create_ingest(f"bench{size}", "sha256").id
                times: dict[str, list[float]] = {"file": [], "db": [], "read": []}
                for _ in range(2):
                    for i in range(args.rounds):
                        t = time.perf_counter()
                        _file_checkpoint(meta, Path(d), ingest, i, tail)
                        times["file"].append(time.perf_counter() - t)
                        t = time.perf_counter()
                        meta.checkpoint_with_tail(ingest, [], i, 0, 0, tail)
                        times["db"].append(time.perf_counter() - t)
                        t = time.perf_counter()
                        assert meta.ingest_tail(ingest, i) == tail
                        times["read"].append(time.perf_counter() - t)
                cells = [f"{statistics.median(v) * 1e3:.1f} ms (min {min(v) * 1e3:.1f})"
                         for v in times.values()]
                label = "100 KB" if size == 100_000 else "1 MiB"
                print(f"| {label} | " + " | ".join(cells) + " |")
        finally:
            meta.close()


if __name__ == "__main__":
    main()
