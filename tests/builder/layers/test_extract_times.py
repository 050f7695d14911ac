"""File times as a layer's pax records give them, to the nanosecond (as Go's tar reader,
BuildKit's and Docker's, takes them), before 1970 as after."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from builder.layers import apply_layer

TIMES = {
    "last-ns-of-a-second": ("1700000000.999999999", 1_700_000_000_999_999_999),
    "quarter": ("1700000000.75", 1_700_000_000_750_000_000),
    "before-1970": ("-1000000000.25", -1_000_000_000_250_000_000),
    "half-before-1970": ("-0.5", -500_000_000),
    "more-digits-than-ns": ("1700000000.1234567891", 1_700_000_000_123_456_789),
    "whole": ("4294967396", 4_294_967_396_000_000_000),
}


def test_pax_mtimes_are_applied_to_the_nanosecond(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, (text, _) in TIMES.items():
            info = tarfile.TarInfo(name)
            info.size, info.pax_headers = 1, {"mtime": text}
            tf.addfile(info, io.BytesIO(b"x"))
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(io.BytesIO(buf.getvalue()), root)
    # a float of 1700000000.999999999 is 1700000001.0: the file was a second late
    assert {name: os.lstat(root / name).st_mtime_ns for name in TIMES} == {
        name: ns for name, (_, ns) in TIMES.items()}
