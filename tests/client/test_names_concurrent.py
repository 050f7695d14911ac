"""Several processes naming and removing local images on one storage directory at once
(two CI jobs tagging ``app``, ``pybuild rmi app`` beside a pull that names it): the name
ends up naming one whole image, every blob of which its name keeps from ``storage gc``."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

from cas.holders import image_holder
from registry.client.image_store import ImageStore

from .helpers import make_image, random_bytes, seed_store

# Each process names (or removes) the same refs, in the same order, once each: their puts
# and removes of one ref overlap, and nothing names a ref again afterwards. They start
# together, then drift apart: a few rounds.
_ROUNDS = [[f"example.com/app{r}:{n}" for n in range(8)] for r in range(5)]
_WORKER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from registry.client.image_store import ImageStore

    async def main(storage, manifest, *refs):
        raw = Path(manifest).read_bytes() if manifest != "-" else None
        async with await ImageStore.open(Path(storage)) as images:
            print("ready", flush=True)
            sys.stdin.readline()  # all start together
            for ref in refs:
                if raw is None:
                    await images.remove(ref)
                else:
                    await images.put(ref, raw)

    asyncio.run(main(*sys.argv[1:]))
""")


def _image(seed: int):  # type: ignore[no-untyped-def]
    # many layers: naming one links each, which leaves time for the other process
    return make_image([[random_bytes(1_000, seed * 100 + i)] for i in range(12)])


def test_processes_naming_and_removing_one_ref_leave_its_image_whole(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    one, two = _image(1), _image(2)

    seed_store(storage, {"example.com/one:1": one, "example.com/two:1": two})
    for n, image in ((1, one), (2, two)):
        (tmp_path / f"m{n}").write_bytes(image.manifest)
    for refs in _ROUNDS:
        with contextlib.ExitStack() as stack:
            workers = [stack.enter_context(subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(storage), arg, *refs],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
                for arg in (str(tmp_path / "m1"), str(tmp_path / "m2"), "-")]
            assert [w.stdout.readline() for w in workers] == ["ready\n"] * 3  # type: ignore[union-attr]
            for w in workers:
                w.stdin.close()  # type: ignore[union-attr]
            assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]

    async def check() -> int:
        named = 0
        async with await ImageStore.open(storage) as images:
            for ref in (ref for refs in _ROUNDS for ref in refs):
                local = await images.resolve(ref)
                if local is None:  # removed last
                    continue
                named += 1
                image = one if local.digest == one.digest else two
                linked = {str(d) for d in await images.store.linked(image_holder(ref))}
                missing = (image.blob_digests() | {str(image.digest)}) - linked
                assert not missing, f"{ref} names {local.digest} but does not keep {missing}"
        return named

    assert asyncio.run(check()) > 0
