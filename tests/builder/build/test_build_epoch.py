"""SOURCE_DATE_EPOCH as BuildKit takes it: ``--build-arg SOURCE_DATE_EPOCH=N``, the
environment variable, or ``--source-date-epoch``; it pins the config's and history's
``created`` and clamps the layers' file times."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from builder.steps.common import BuildError

ROOT = Path(__file__).resolve().parents[3]
EPOCH = 1234567890
EPOCH_TEXT = "2009-02-13T23:31:30Z"


def _layer_mtimes(layout: Path, image) -> list[int]:  # type: ignore[no-untyped-def]
    """The mtimes of every entry in the layers the build made (not the base's)."""
    out = []
    for layer in image.manifest.layers[1:]:
        data = gzip.decompress((layout / "blobs/sha256" / layer.digest.encoded).read_bytes())
        with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tf:
            out.extend(int(m.mtime) for m in tf.getmembers())
    return out


def test_build_arg_sets_the_epoch(context_of, build, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = context_of("basic")
    args = {"SOURCE_DATE_EPOCH": str(EPOCH)}
    a = build(ctx, storage=tmp_path / "a", build_args=args, oci=tmp_path / "oci-a")
    b = build(ctx, storage=tmp_path / "b", build_args=args, oci=tmp_path / "oci-b")
    assert a.image.digest == b.image.digest
    config = json.loads(a.image.config_bytes)
    assert config["created"] == EPOCH_TEXT
    assert {h["created"] for h in config["history"][1:]} == {EPOCH_TEXT}
    mtimes = _layer_mtimes(tmp_path / "oci-a", a.image)
    assert mtimes and max(mtimes) == EPOCH


def test_environment_variable_sets_the_epoch(context_of, build, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context_of("basic")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    from_env = build(ctx, storage=tmp_path / "a")
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    from_arg = build(ctx, storage=tmp_path / "b", build_args={"SOURCE_DATE_EPOCH": str(EPOCH)})
    assert from_env.image.digest == from_arg.image.digest
    assert json.loads(from_env.image.config_bytes)["created"] == EPOCH_TEXT


def test_flag_wins_over_build_arg_and_environment(context_of, build, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    result = build(context_of("basic"), storage=tmp_path / "a", source_date_epoch=EPOCH,
                   build_args={"SOURCE_DATE_EPOCH": "7"})
    assert json.loads(result.image.config_bytes)["created"] == EPOCH_TEXT


@pytest.mark.parametrize("value", ["yesterday", "-5", "1e9", "99999999999999999999"])
def test_bad_epoch_is_one_clear_error(context_of, build, tmp_path: Path, value: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    with pytest.raises(BuildError, match=r"SOURCE_DATE_EPOCH=.*seconds since 1970"):
        build(context_of("basic"), storage=tmp_path / "a",
              build_args={"SOURCE_DATE_EPOCH": value})


def test_bad_epoch_from_the_command_line(context_of, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SOURCE_DATE_EPOCH="now")
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--storage",
                           str(tmp_path / "s"), str(context_of("basic"))],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1 and "SOURCE_DATE_EPOCH=now" in lines[0], proc.stderr
