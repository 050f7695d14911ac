"""``python3 -m bench.pull_floor``: the native floor program is built, pulls every blob of
the image from a real Distribution with its digest checked, and the harness prints a
median row per column. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from testkit.tools import missing, require_tool

ROOT = Path(__file__).resolve().parents[2]


def test_a_quick_run_prints_every_column() -> None:
    for tool in ("gcc", "docker-registry", "skopeo"):
        require_tool(tool)
    if not Path("/usr/include/openssl/sha.h").exists():
        missing("OpenSSL's headers are not installed; install libssl-dev "
                "(`bash tests/run` installs every package the tests need)")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pull_floor", "--rounds", "1", "--layers", "2",
         "--layer-mib", "2", "--files", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("3 blobs, 4 MB of layers\n")
    medians = proc.stdout.split("median:\n", 1)[1]
    rows = re.findall(r"^  (.+?) +(\d+\.\d+) s wall, client CPU +(\d+\.\d+) s, registry CPU +"
                      r"(\d+\.\d+) s$", medians, re.M)
    assert [r[0] for r in rows] == ["floor", "floor, page cache", "pybuild", "skopeo"]
    assert all(float(r[1]) > 0 for r in rows)
