"""Which PostgreSQL driver the metadata uses: psycopg 3 (synchronous from worker threads, as
the store calls its metadata; asynchronous on the event loop, as the registry does) vs
asyncpg, on the queries the hot paths make.

    python3 -m bench.pg_drivers [--seconds 3]

Starts a throw-away PostgreSQL (testkit.postgres), fills a table like the registry's
``tags``, then measures for each driver: point SELECTs per second with 16 concurrent
callers, the median latency of one SELECT alone, and small write transactions (advisory
lock + upsert, as every metadata write is) per second with 16 concurrent callers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from testkit.postgres import postgres_server

_SELECT = "SELECT digest FROM tags WHERE repo = $1 AND tag = $2"
_WRITE = ("INSERT INTO tags VALUES ($1, $2, $3) ON CONFLICT (repo, tag) "
          "DO UPDATE SET digest = EXCLUDED.digest")
_ROWS = 10_000
CONCURRENCY = 16


def _pg(sql: str) -> str:
    return sql.replace("$1", "%s").replace("$2", "%s").replace("$3", "%s")


def _setup(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tags(repo TEXT, tag TEXT, digest TEXT, PRIMARY KEY(repo, tag))")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO tags VALUES (%s, %s, %s)",
                            [("app", f"t{i}", f"sha256:{i:064x}") for i in range(_ROWS)])


def _psycopg_threads(url: str, seconds: float) -> dict[str, float]:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(url, min_size=CONCURRENCY, max_size=CONCURRENCY,
                          kwargs={"autocommit": True})
    pool.wait()

    def select(i: int) -> None:
        with pool.connection() as c:
            c.execute(_pg(_SELECT), ("app", f"t{i % _ROWS}")).fetchone()

    def write(i: int) -> None:
        with pool.connection() as c, c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(1)")
            c.execute(_pg(_WRITE), ("app", f"w{i % 100}", "sha256:x"))

    def rate(fn: Callable[[int], None]) -> float:
        count = [0] * CONCURRENCY
        stop = time.monotonic() + seconds

        def loop(n: int) -> None:
            i = n
            while time.monotonic() < stop:
                fn(i)
                i += CONCURRENCY
                count[n] += 1

        with ThreadPoolExecutor(CONCURRENCY) as ex:
            list(ex.map(loop, range(CONCURRENCY)))
        return sum(count) / seconds

    lat = []
    for i in range(500):
        t = time.perf_counter()
        select(i)
        lat.append(time.perf_counter() - t)
    out = {"select/s": rate(select), "select latency us": statistics.median(lat) * 1e6,
           "write tx/s": rate(write)}
    pool.close()
    return out


async def _async_rate(fn: Callable[[int], Awaitable[None]], seconds: float) -> float:
    stop = time.monotonic() + seconds
    count = [0]

    async def loop(n: int) -> None:
        i = n
        while time.monotonic() < stop:
            await fn(i)
            i += CONCURRENCY
            count[0] += 1

    await asyncio.gather(*(loop(n) for n in range(CONCURRENCY)))
    return count[0] / seconds


async def _psycopg_async(url: str, seconds: float) -> dict[str, float]:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(url, min_size=CONCURRENCY, max_size=CONCURRENCY,
                               kwargs={"autocommit": True}, open=False)
    await pool.open(wait=True)

    async def select(i: int) -> None:
        async with pool.connection() as c:
            await (await c.execute(_pg(_SELECT), ("app", f"t{i % _ROWS}"))).fetchone()

    async def write(i: int) -> None:
        async with pool.connection() as c, c.transaction():
            await c.execute("SELECT pg_advisory_xact_lock(1)")
            await c.execute(_pg(_WRITE), ("app", f"w{i % 100}", "sha256:x"))

    lat = []
    for i in range(500):
        t = time.perf_counter()
        await select(i)
        lat.append(time.perf_counter() - t)
    out = {"select/s": await _async_rate(select, seconds),
           "select latency us": statistics.median(lat) * 1e6,
           "write tx/s": await _async_rate(write, seconds)}
    await pool.close()
    return out


async def _asyncpg(url: str, seconds: float) -> dict[str, float]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=CONCURRENCY, max_size=CONCURRENCY)

    async def select(i: int) -> None:
        async with pool.acquire() as c:
            await c.fetchrow(_SELECT, "app", f"t{i % _ROWS}")

    async def write(i: int) -> None:
        async with pool.acquire() as c, c.transaction():
            await c.execute("SELECT pg_advisory_xact_lock(1)")
            await c.execute(_WRITE, "app", f"w{i % 100}", "sha256:x")

    lat = []
    for i in range(500):
        t = time.perf_counter()
        await select(i)
        lat.append(time.perf_counter() - t)
    out = {"select/s": await _async_rate(select, seconds),
           "select latency us": statistics.median(lat) * 1e6,
           "write tx/s": await _async_rate(write, seconds)}
    await pool.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with postgres_server() as server:
        url = server.create_database("drivers")
        _setup(url)
        results = {
            "psycopg 3, 16 threads": _psycopg_threads(url, args.seconds),
            "psycopg 3, asyncio": asyncio.run(_psycopg_async(url, args.seconds)),
            "asyncpg": asyncio.run(_asyncpg(url, args.seconds)),
        }
    print(f"{'driver':24} {'select/s':>10} {'latency us':>11} {'write tx/s':>11}"
          f"   (threads alive: {threading.active_count()})")
    for name, r in results.items():
        print(f"{name:24} {r['select/s']:>10,.0f} {r['select latency us']:>11,.0f} "
              f"{r['write tx/s']:>11,.0f}")


if __name__ == "__main__":
    main()
