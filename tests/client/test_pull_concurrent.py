"""Two ``pybuild pull`` processes pulling one image into one storage directory at once
(CI jobs starting together on a slow network): a pull records its ingest in ``images.db``
at its first checkpoint so that a later run can resume it, and the other pull must not
write into it meanwhile. Both succeed and the store holds every blob whole."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from testkit import registries

from .helpers import make_image, random_bytes, seed_store

ROOT = Path(__file__).resolve().parents[2]

# `pybuild pull --storage STORAGE REF`, checkpointing every 4 MiB (as a slow transfer
# does); once its first checkpoint is recorded, another `pybuild pull` of the same
# image into the same storage runs to its end.
_WORKER = textwrap.dedent("""
    import subprocess, sys
    import registry.client.pull_sink as pull_sink
    from registry.client.image_store import ImageStore
    from builder.cli import main

    made = pull_sink._Sink.__init__
    record = ImageStore.set_pending_pull

    def sink(self, *args, **kwargs):
        made(self, *args, **kwargs)
        self.every, self.interval = 4 << 20, 0.0

    async def recorded(self, digest, ingest_id):
        await record(self, digest, ingest_id)
        if ingest_id is not None and not getattr(recorded, "done", False):
            recorded.done = True
            subprocess.run([sys.executable, "-m", "builder", "pull", "-q", "--storage",
                            *sys.argv[1:]], check=True)

    pull_sink._Sink.__init__ = sink
    ImageStore.set_pending_pull = recorded
    main(["pull", "-q", "--storage", *sys.argv[1:]], prog_name="pybuild")
""")


def test_a_pull_beside_another_of_the_same_image_leaves_the_store_whole(tmp_path: Path) -> None:
    source = tmp_path / "source"
    image = make_image([[random_bytes(1 << 20, i) for i in range(24)]])
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def pybuild(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "builder", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    with registries.pybuild_registry(tmp_path / "registry") as registry:
        ref = registry.ref("app", "1")

        seed_store(source, {ref: image})
        pushed = pybuild("push", "-q", "--storage", str(source), ref)
        assert pushed.returncode == 0, pushed.stderr
        storage = tmp_path / "storage"
        pull = subprocess.run([sys.executable, "-c", _WORKER, str(storage), ref], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert pull.returncode == 0, pull.stderr
    fsck = pybuild("storage", "fsck", "--storage", str(storage))
    assert fsck.returncode == 0 and "clean" in fsck.stdout, fsck.stdout + fsck.stderr
    stats = pybuild("storage", "stats", "--storage", str(storage))
    assert "open ingests:   0" in stats.stdout, stats.stdout
