"""SOURCE_DATE_EPOCH as BuildKit takes it: ``--build-arg SOURCE_DATE_EPOCH=N``, the
environment variable, ``--source-date-epoch``, or a global ``ARG SOURCE_DATE_EPOCH=N``
default; it pins the config's and history's ``created``, clamps the layers' file times,
gives every file of the local and tar outputs its time, and reaches the stages that
declare the ARG."""

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


@pytest.mark.parametrize("value", ["5_000", "\uff11\uff12\uff13", " 5"])
def test_option_refuses_what_the_other_forms_refuse(context_of, tmp_path: Path,
                                                    value: str) -> None:
    # Python's int() takes these; the build arg and the environment variable do not
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--storage",
                           str(tmp_path / "s"), "--source-date-epoch", value,
                           str(context_of("basic"))],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, proc.stderr
    assert f"--source-date-epoch SOURCE_DATE_EPOCH={value}" in lines[0]
    assert "expected a whole number of seconds since 1970" in lines[0]


def test_file_outputs_have_the_epoch_whoever_checked_out(context_of, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``type=local`` and ``type=tar`` give every file the epoch, as BuildKit's local and
    tar exporters do: two checkouts made at different times give the same files."""
    import asyncio

    from builder.build import BuildOptions, run_build
    from builder.outputs import Output
    from builder.progress import BuildProgress

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = context_of("basic")
    archives = []
    for run, checked_out in (("a", EPOCH + 1000), ("b", EPOCH + 99_000)):
        for dirpath, dirnames, filenames in os.walk(ctx):
            for name in dirnames + filenames:
                os.utime(os.path.join(dirpath, name), (checked_out, checked_out))
        local, tar = tmp_path / f"local-{run}", tmp_path / f"fs-{run}.tar"
        opts = BuildOptions(context=ctx, storage=tmp_path / f"storage-{run}",
                            outputs=(Output("local", local), Output("tar", tar)),
                            source_date_epoch=EPOCH)
        asyncio.run(run_build(opts, BuildProgress("quiet")))
        for p in ("app/greeting.txt", "app/run.txt", "opt/dir", "app", "bin/sh"):
            assert os.lstat(local / p).st_mtime == EPOCH, p
        with tarfile.open(tar) as tf:
            members = tf.getmembers()
        assert {m.mtime for m in members} == {EPOCH}
        assert not any("mtime" in m.pax_headers for m in members)
        archives.append(tar.read_bytes())
    assert archives[0] == archives[1]


def test_global_arg_default_sets_the_epoch(context_of, build, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``ARG SOURCE_DATE_EPOCH=N`` before the first FROM is the epoch when the caller
    gives none (Dockerfile 1.23), and a stage that declares the ARG sees it."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    result = build(context_of("epoch-arg"), storage=tmp_path / "a", local=tmp_path / "out")
    config = json.loads(result.image.config_bytes)
    assert config["created"] == EPOCH_TEXT
    assert (tmp_path / "out/sde.txt").read_text() == f"{EPOCH}\n"
    assert os.lstat(tmp_path / "out/sde.txt").st_mtime == EPOCH


@pytest.mark.parametrize("how", ["environment", "flag"])
def test_stage_arg_sees_the_epoch_however_given(context_of, build, tmp_path: Path, how: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As buildx passes ``$SOURCE_DATE_EPOCH`` on as the build arg, a RUN whose stage
    declares ``ARG SOURCE_DATE_EPOCH`` sees the epoch the image gets (tools in the step,
    such as gzip or dpkg, read it), not the Dockerfile's default."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    if how == "environment":
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
        kw: dict[str, object] = {}
    else:
        kw = {"source_date_epoch": 1700000000}
    result = build(context_of("epoch-arg"), storage=tmp_path / "a", local=tmp_path / "out", **kw)
    assert json.loads(result.image.config_bytes)["created"] == "2023-11-14T22:13:20Z"
    assert (tmp_path / "out/sde.txt").read_text() == "1700000000\n"


def test_platform_directories_have_the_epoch(context_of, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-platform ``type=tar`` holds one directory per platform; with an epoch those
    directories have its time too, as in BuildKit's tar exporter."""
    import asyncio

    from builder.build import BuildOptions, run_build
    from builder.outputs import Output
    from builder.progress import BuildProgress

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    tar = tmp_path / "fs.tar"
    opts = BuildOptions(context=context_of("epoch-platforms"), storage=tmp_path / "s",
                        outputs=(Output("tar", tar),), platform="linux/amd64,linux/arm64",
                        source_date_epoch=EPOCH)
    asyncio.run(run_build(opts, BuildProgress("quiet")))
    with tarfile.open(tar) as tf:
        times = {m.name: m.mtime for m in tf.getmembers()}
    assert set(times) == {"linux_amd64", "linux_amd64/greeting.txt", "linux_arm64",
                          "linux_arm64/greeting.txt"}
    assert set(times.values()) == {EPOCH}


def test_bad_global_arg_default_is_one_clear_error(context_of, build, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = context_of("epoch-arg-bad")
    with pytest.raises(BuildError, match=r"Dockerfile: ARG SOURCE_DATE_EPOCH=yesterday: "
                                         r"expected a whole number of seconds since 1970"):
        build(ctx, storage=tmp_path / "a")
    # a value given by the caller wins over the Dockerfile's default, as in BuildKit
    result = build(ctx, storage=tmp_path / "b", source_date_epoch=EPOCH)
    assert json.loads(result.image.config_bytes)["created"] == EPOCH_TEXT
