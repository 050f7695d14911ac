"""The pull rows of two or more registries measured in alternated rounds, in the same minutes.

One pull of a 1 GiB blob takes about a second; measured once per registry, minutes apart
(one registry's whole run after the other's), a ratio says more about how busy the machine
was at each moment than about the registries. Here every round pulls from each registry in
turn (the order swapped every round, so neither always goes first), and each row reports
the median of its rounds, with the spread in its notes:

- blob pull, 1 client: one ``GET`` of the pushed blob (after one untimed warm-up GET);
- blob pull, N clients: N processes ``GET`` it at once, aggregate MB/s;
- skopeo copy pull: ``skopeo copy`` of the pushed ten-layer image into a fresh OCI layout.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from pathlib import Path

from bench.registry_bench import (
    MiB,
    RegistryBenchError,
    RegistryData,
    RegistrySettings,
    _concurrent_pull,
    _pull_blob,
    _push_blob,
    _session,
    _skopeo_copy,
    _skopeo_push_and_pulls,
)
from bench.report import Measurement

__all__ = ["PULL_ROWS", "alternated_pulls", "push_for_pulls", "rounds_for"]

#: The names of the rows :func:`alternated_pulls` measures start with these.
PULL_ROWS = ("blob pull ", "skopeo copy pull")

_TEN_LAYERS = "bench/ten-layers:latest"


def rounds_for(settings: RegistrySettings) -> int:
    """Rounds of alternated pulls: 5, or 2 for ``--quick``'s single pulls."""
    return 5 if settings.pull_repeats > 1 else 2


def push_for_pulls(target: str, addr: str, data: RegistryData, settings: RegistrySettings,
                   workdir: Path) -> None:
    """Push what :func:`alternated_pulls` pulls: the blob (``POST`` + ``PUT``) and the
    ten-layer image (``skopeo copy``, as the registry area does)."""

    async def push() -> None:
        async with _session() as session:
            await _push_blob(session, f"http://{addr}", "bench/blob", data.blob, data.blob_digest)

    asyncio.run(push())
    _skopeo_push_and_pulls(target, addr, data, settings, workdir, pulls=0)


def _pull_seconds(url: str, size: int, warm: bool) -> float:
    async def go() -> float:
        async with _session() as session:
            if warm:
                await _pull_blob(session, url)
            start = time.perf_counter()
            received = await _pull_blob(session, url)
            elapsed = time.perf_counter() - start
        if received != size:
            raise RegistryBenchError(f"pulled {received} bytes of {size}")
        return elapsed

    return asyncio.run(go())


def alternated_pulls(addrs: dict[str, str], data: RegistryData, settings: RegistrySettings,
                     workdir: Path, variant: str = "") -> list[Measurement]:
    """The pull rows of every registry in ``addrs`` (target -> ``host:port``, each holding
    what :func:`push_for_pulls` pushes), measured in alternated rounds; each row's name
    is followed by ``, variant`` when given."""
    mb = len(data.blob) / 1e6
    lmb = data.layout_bytes / 1e6
    samples: dict[str, dict[str, list[float]]] = {t: {"one": [], "many": [], "skopeo": []} for t in addrs}
    targets = list(addrs)
    for r in range(rounds_for(settings)):
        for target in targets if r % 2 == 0 else targets[::-1]:
            addr = addrs[target]
            url = f"http://{addr}/v2/bench/blob/blobs/{data.blob_digest}"
            got = samples[target]
            got["one"].append(mb / _pull_seconds(url, len(data.blob), warm=r == 0))
            got["many"].append(_concurrent_pull(url, settings.clients))
            pulled = workdir / f"pulled-{target}"
            shutil.rmtree(pulled, ignore_errors=True)
            got["skopeo"].append(_skopeo_copy(f"docker://{addr}/{_TEN_LAYERS}", f"oci:{pulled}:latest"))
            shutil.rmtree(pulled, ignore_errors=True)
    size = f"{len(data.blob) / MiB:.0f} MiB"
    layers = f"{settings.layers} x {settings.layer_size / MiB:.0f} MiB layers"
    suffix = f", {variant}" if variant else ""

    def row(name: str, unit: str, key: str, higher: bool = True, scale: float | None = None) -> Measurement:
        values, spread = {}, []
        for target, got in samples.items():
            xs = [scale / x for x in got[key]] if scale is not None else got[key]
            values[target] = round(statistics.median(xs), 3)
            spread.append(f"{target} {min(xs):.3g}-{max(xs):.3g}")
        notes = f"median of {len(xs)} alternated rounds; " + ", ".join(spread)
        return Measurement(name + suffix, unit, higher, values, notes)

    return [
        row(f"blob pull {size}, 1 client", "MB/s", "one"),
        row(f"blob pull {size}, {settings.clients} clients", "MB/s", "many"),
        row(f"skopeo copy pull ({layers})", "s", "skopeo", higher=False),
        row("skopeo copy pull", "MB/s", "skopeo", scale=lmb),
    ]
