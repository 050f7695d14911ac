"""The tar of a fixed changeset is byte-identical everywhere: a pinned diff_id."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from builder.layers import Changeset, Entry, EntryKind, Whiteout, write_tar

HERE = Path(__file__).parent / "testfiles"


def golden_changeset(tmp_path: Path) -> tuple[Changeset, dict]:
    spec = json.loads((HERE / "golden-tree.json").read_text())
    entries = []
    for i, e in enumerate(spec["entries"]):
        source = None
        size = 0
        if e["kind"] == "file":
            data = e["content"].encode()
            source = tmp_path / f"content-{i}"
            source.write_bytes(data)
            size = len(data)
        entries.append(Entry(
            path=e["path"], kind=EntryKind(e["kind"]), mode=e["mode"], uid=e["uid"],
            gid=e["gid"], mtime_ns=e["mtime"] * 10**9, size=size,
            source=str(source) if source else None, link=e.get("link", ""),
            devmajor=e.get("devmajor", 0), devminor=e.get("devminor", 0),
            xattrs=tuple(sorted((k, v.encode()) for k, v in e.get("xattrs", {}).items())),
        ))
    whiteouts = [Whiteout(w["path"], w.get("opaque", False)) for w in spec["whiteouts"]]
    return Changeset.create(entries, whiteouts), spec


def test_golden_tar_digest(tmp_path: Path) -> None:
    cs, spec = golden_changeset(tmp_path)
    buf = io.BytesIO()
    diff_id, size = write_tar(cs, buf, source_date_epoch=spec["source_date_epoch"])
    expected = (HERE / "golden-tree.diff_id").read_text().strip()
    assert str(diff_id) == expected, (
        "the tar writer's output changed: if on purpose, every layer digest changes too; "
        "update golden-tree.diff_id"
    )
    # and the pinned bytes say what the spec says
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        members = {m.name: m for m in tf}
    assert members["bin/ash"].mtime == spec["source_date_epoch"]  # clamped
    assert members["bin/ash"].mode == 0o4755 and members["etc/passwd"].mtime == 1600000000
    assert members["bin/busybox"].islnk() and members["dev/null"].ischr()
    assert members["tmp"].mode == 0o1777
    assert {"usr/.wh..wh..opq", ".wh.var", "etc/.wh.shadow"} <= members.keys()
    assert size == len(buf.getvalue()) and size % 512 == 0
