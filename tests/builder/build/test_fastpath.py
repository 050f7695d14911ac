"""The "nothing changed" fast path of ``pybuild build`` (builder.fastpath).

Each build runs as its own ``python -m builder`` process, as a user runs it: the fast path
only exists before the CLI is imported. ``PYBUILD_FASTPATH_DEBUG`` makes it say ``hit`` or
``miss``; ``PYBUILD_NO_FASTPATH`` gives the normal cached path to compare against.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builder import autogc
from builder.context import RACY_NS
from builder.fastpath import USE_EVERY, parse_argv
from testkit.rootfs import make_busybox_rootfs

from .conftest import write_base_layout

ROOT = Path(__file__).resolve().parents[3]


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        assert proc.returncode == 0, proc.stderr
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.digest = (proc.stdout.strip().splitlines() or [""])[-1]

    @property
    def hit(self) -> bool:
        return "fastpath: hit" in self.stderr

    @property
    def progress(self) -> str:
        """stderr without the debug line and with timings blanked."""
        lines = [line for line in self.stderr.splitlines() if not line.startswith("fastpath:")]
        text = "\n".join(lines)
        text = re.sub(r"DONE \d+\.\ds", "DONE", text)
        return re.sub(r'"seconds": [0-9.]+', '"seconds": 0', text)


@pytest.fixture
def pybuild(tmp_path: Path) -> Callable[..., Run]:
    storage = tmp_path / "storage"

    def run(*args: str, normal: bool = False, env: dict[str, str] | None = None) -> Run:
        full = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_FASTPATH_DEBUG="1", **(env or {}))
        if normal:
            full["PYBUILD_NO_FASTPATH"] = "1"
        argv = [sys.executable, "-m", "builder", args[0], "--storage", str(storage), *args[1:]]
        return Run(subprocess.run(argv, capture_output=True, text=True, env=full,
                                  cwd=tmp_path, timeout=120, check=False))
    return run


DOCKERFILE = "FROM BASE\nCOPY a /a\nRUN date +%N > /t\n"


@pytest.fixture
def ctx(tmp_path: Path, busybox_ref: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("BASE", busybox_ref))
    (ctx / "a").write_text("one\n")
    (ctx / "sub").mkdir()
    (ctx / "sub" / "b").write_text("two\n")
    time.sleep(0.2)  # older than the fast path's racy window
    return ctx


@pytest.mark.parametrize("mode", ["plain", "json", "quiet", "tty"])
def test_rebuild_takes_fast_path_with_identical_output(
        pybuild: Callable[..., Run], ctx: Path, tmp_path: Path, mode: str) -> None:
    args = ("build", "-t", "fp/img", "--progress", mode, "--iidfile", str(tmp_path / "iid"),
            "--metadata-file", str(tmp_path / "meta.json"), str(ctx))
    first = pybuild(*args)
    assert not first.hit
    normal = pybuild(*args, normal=True)
    normal_meta = (tmp_path / "meta.json").read_text()
    (tmp_path / "iid").unlink()
    (tmp_path / "meta.json").unlink()
    fast = pybuild(*args)
    assert fast.hit
    assert fast.digest == normal.digest == first.digest
    assert fast.stdout == normal.stdout
    assert fast.progress == normal.progress
    # the image ID, as buildx writes it: the config's digest
    assert (tmp_path / "iid").read_text() == json.loads(normal_meta)[
        "containerimage.config.digest"]
    assert (tmp_path / "meta.json").read_text() == normal_meta
    if mode in ("plain", "tty"):  # tty: plain lines where stderr is no terminal, as docker
        assert "#3 CACHED" in fast.progress and "#4 naming fp/img" in fast.progress


@pytest.mark.parametrize("extra", [
    ["-q"], ["--quiet", "--progress=quiet"],
    ["--annotation", "org.example.team=one", "--add-host", "db:10.0.0.7", "--shm-size", "128m",
     "--ulimit", "nofile=1024:2048"],
    ["--rm", "--force-rm", "--compress"],  # the classic builder's: docker and buildx ignore them
])
def test_rebuild_with_quiet_or_run_options_takes_fast_path(
        pybuild: Callable[..., Run], ctx: Path, extra: list[str]) -> None:
    """-q prints the digest and nothing else, as the normal path does; options whose
    value is all that matters (in the fingerprinted argv) keep the fast path."""
    args = ("build", "-t", "fp/img", *extra, str(ctx))
    first = pybuild(*args)
    assert not first.hit
    normal = pybuild(*args, normal=True)
    fast = pybuild(*args)
    assert fast.hit
    assert fast.stdout == normal.stdout == first.stdout == fast.digest + "\n"
    assert fast.progress == normal.progress
    if "-q" in extra or "--quiet" in extra:
        assert fast.progress == ""


def test_quiet_prints_the_image_id_as_docker_build_q(pybuild: Callable[..., Run], ctx: Path,
                                                     tmp_path: Path) -> None:
    """``docker build -q`` prints the image ID: what ``--iidfile`` holds and ``inspect``
    calls ``Id`` (the config's digest), on the normal path and the fast path alike; a
    build without -q prints the manifest digest."""
    args = ("build", "-t", "fp/img", "-q", "--iidfile", str(tmp_path / "iid"), str(ctx))
    first = pybuild(*args)
    normal = pybuild(*args, normal=True)
    fast = pybuild(*args)
    assert fast.hit and not first.hit
    image_id = (tmp_path / "iid").read_text()
    assert first.stdout == normal.stdout == fast.stdout == image_id + "\n"
    assert pybuild("inspect", "-f", "{{.Id}}", "fp/img").stdout == image_id + "\n"
    manifest = pybuild("images", "-q", "--no-trunc", "fp/img").stdout
    assert manifest != image_id + "\n"
    assert pybuild("build", "-t", "fp/img", str(ctx)).stdout == manifest


def test_fast_path_imports_no_cli(pybuild: Callable[..., Run], ctx: Path) -> None:
    pybuild("build", "-t", "fp/img", str(ctx))
    code = ("import sys, runpy; sys.argv = ['pybuild', *sys.argv[1:]]\n"
            "import builder.fastpath as f\n"
            "f.ARGV = sys.argv[1:]\n"
            "ok = f.try_fast_path(f.ARGV)\n"
            "print('HIT' if ok else 'MISS', 'click' in sys.modules, "
            "'builder.build' in sys.modules, file=sys.stderr)\n")
    storage = ctx.parent / "storage"
    proc = subprocess.run([sys.executable, "-c", code, "build", "--storage", str(storage),
                           "-t", "fp/img", str(ctx)], capture_output=True, text=True,
                          cwd=ctx.parent, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          check=False)
    assert "HIT False False" in proc.stderr, proc.stderr


def test_changes_fall_back_to_the_normal_path(pybuild: Callable[..., Run], ctx: Path) -> None:
    args = ("build", "-t", "fp/img", "--progress", "plain", str(ctx))
    base = pybuild(*args)
    assert pybuild(*args).hit

    # touching a file (same bytes): a miss, the same image, then hits again
    os.utime(ctx / "sub" / "b")
    time.sleep(0.2)
    touched = pybuild(*args)
    assert not touched.hit and touched.digest == base.digest
    assert pybuild(*args).hit

    # changed bytes: a new image, as the normal path says
    (ctx / "a").write_text("three\n")
    time.sleep(0.2)
    changed = pybuild(*args)
    assert not changed.hit and changed.digest != base.digest
    again = pybuild(*args)
    assert again.hit and again.digest == changed.digest
    assert pybuild(*args, normal=True).digest == changed.digest

    # the Dockerfile
    with open(ctx / "Dockerfile", "a") as f:
        f.write("ENV X=1\n")
    time.sleep(0.2)
    df = pybuild(*args)
    assert not df.hit and df.digest != changed.digest

    # a build argument (another command line) and an environment variable
    assert not pybuild("build", "-t", "fp/img", "--build-arg", "A=1", str(ctx)).hit
    assert not pybuild(*args, env={"SOURCE_DATE_EPOCH": "0"}).hit
    # that build filed its own fingerprint under this command line: back to a miss, then hits
    back = pybuild(*args)
    assert not back.hit and back.digest == df.digest
    assert pybuild(*args).hit


def test_removed_tag_falls_back_and_retags(pybuild: Callable[..., Run], ctx: Path) -> None:
    args = ("build", "-t", "fp/img", str(ctx))
    first = pybuild(*args)
    assert pybuild(*args).hit
    pybuild("rmi", "fp/img")
    after = pybuild(*args)
    assert not after.hit and after.digest == first.digest
    images = pybuild("images")
    assert "fp/img" in images.stdout


def test_changed_base_image_falls_back(pybuild: Callable[..., Run], tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    ref = write_base_layout(rootfs, tmp_path / "layout")
    ctx = tmp_path / "ctx2"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {ref}\nRUN echo hi > /hi\n")
    time.sleep(0.2)
    args = ("build", "-t", "fp/base", str(ctx))
    first = pybuild(*args)
    assert pybuild(*args).hit
    # the layout's tag now names another image
    (rootfs / "extra").write_text("new base\n")
    os.rename(tmp_path / "layout", tmp_path / "old-layout")
    write_base_layout(rootfs, tmp_path / "layout")
    changed = pybuild(*args)
    assert not changed.hit and changed.digest != first.digest


def test_no_cache_build_records_for_the_cached_command(
        pybuild: Callable[..., Run], ctx: Path) -> None:
    args = ("build", "-t", "fp/img", str(ctx))
    first = pybuild(*args)
    rebuilt = pybuild("build", "--no-cache", "-t", "fp/img", str(ctx))
    assert not rebuilt.hit and rebuilt.digest != first.digest  # RUN date +%N differs
    fast = pybuild(*args)
    assert fast.hit and fast.digest == rebuilt.digest
    assert pybuild(*args, normal=True).digest == rebuilt.digest


@pytest.mark.parametrize("argv", [
    ["build", "--push", "-t", "x", "ctx"],
    ["build", "-o", "type=oci,dest=x", "ctx"],
    ["build", "--output=type=oci,dest=x", "ctx"],
    ["build", "--load", "-t", "x", "ctx"],
    ["build", "-o", "-", "ctx"],
    ["build", "--secret", "id=a,src=b", "ctx"],
    ["build", "--ssh", "default", "ctx"],
    ["build", "-f", "-", "ctx"],
    ["build", "--file=-", "ctx"],
    ["build", "-q", "--progress", "plain", "ctx"],  # refused by the normal path
    ["build", "--quiet", "--progress=json", "ctx"],
    ["build", "--build-context", "a=b", "ctx"],
    ["build", "--pull", "ctx"],
    ["build", "--load", "ctx"],
    ["build", "--cache-from", "type=local,src=c", "ctx"],
    ["build", "--cache-to", "type=local,dest=c", "ctx"],
    ["build", "-"],
    ["build", "https://example.invalid/repo.git"],
    ["build", "-qo", "-", "ctx"],
    ["build", "-q=maybe", "ctx"],
    ["build", "-qx", "ctx"],
    ["build", "ctx", "other"],
    ["build", "--help"],
    ["build", "-t"],
    ["pull", "x"],
])
def test_unusual_commands_take_no_fast_path(argv: list[str]) -> None:
    assert parse_argv(argv) is None


def test_parse_argv_understands_build_options() -> None:
    inv = parse_argv(["build", "-t", "a", "--tag=b", "--no-cache", "-f", "D", "ctx"])
    assert inv is not None
    assert inv.opts["tag"] == ["a", "b"] and inv.context == "ctx"
    assert inv.key_argv == ["build", "-t", "a", "--tag=b", "-f", "D", "ctx"]
    assert inv.dockerfile == os.path.abspath("D")


@pytest.mark.parametrize(("argv", "opts"), [
    (["-t=a", "-tb", "--progress=plain", "ctx"], {"tag": ["a", "b"], "progress": ["plain"]}),
    (["-f=D", "-qt", "a", "ctx"], {"file": ["D"], "quiet": ["1"], "tag": ["a"],
                                   "progress": ["quiet"]}),
    (["-qfD", "--no-cache=true", "--", "ctx"], {"file": ["D"], "quiet": ["1"],
                                               "no-cache": ["1"], "progress": ["quiet"]}),
    (["--no-cache", "-q=false", "--no-cache=0", "-q=1", "ctx"], {"quiet": ["1"],
                                                                 "progress": ["quiet"]}),
    (["-qt=a", "ctx"], {"quiet": ["1"], "tag": ["=a"], "progress": ["quiet"]}),  # as click
])
def test_parse_argv_takes_the_forms_the_cli_takes(argv: list[str],
                                                  opts: dict[str, list[str]]) -> None:
    inv = parse_argv(["build", *argv])
    assert inv is not None and inv.context == "ctx"
    assert inv.opts == opts
    assert ("--no-cache=true" in inv.key_argv) is False


def test_equals_and_joined_short_forms_take_the_fast_path(
        pybuild: Callable[..., Run], ctx: Path, tmp_path: Path) -> None:
    """``-t=x``, ``-fD``, ``--progress=plain``, ``-q=false``: the same build as the
    spaced forms, answered by the fast path from the second run."""
    args = ("build", "-t=fp/img", f"-f{ctx / 'Dockerfile'}", "--progress=plain",
            "-q=false", "--no-cache=false", str(ctx))
    first = pybuild(*args)
    fast = pybuild(*args)
    assert not first.hit and fast.hit, fast.stderr
    normal = pybuild("build", "-t", "fp/img", "-f", str(ctx / "Dockerfile"), "--progress",
                     "plain", str(ctx), normal=True)
    assert fast.digest == normal.digest == first.digest
    assert fast.progress == normal.progress and "#4 naming fp/img" in fast.progress


def test_writing_image_names_the_image_id(pybuild: Callable[..., Run], ctx: Path,
                                          tmp_path: Path) -> None:
    """As BuildKit's exporter, the last progress line is ``writing image <image ID>``: the
    ID ``--iidfile`` holds (not the manifest digest stdout has), on both paths."""
    iid = tmp_path / "iid"
    args = ("build", "-t", "fp/img", "--progress", "plain", "--iidfile", str(iid), str(ctx))
    first = pybuild(*args)
    fast = pybuild(*args)
    events = pybuild("build", "-t", "fp/img", "--progress", "json", str(ctx), normal=True)
    image_id = iid.read_text()
    assert fast.hit and image_id != first.digest
    for run in (first, fast):
        assert run.progress.splitlines()[-1] == f"writing image {image_id} done"
    assert json.loads(events.progress.splitlines()[-1]) == {
        "event": "result", "digest": first.digest, "image_id": image_id}


def test_ci_run_variables_keep_the_fast_path(pybuild: Callable[..., Run], ctx: Path) -> None:
    """CI sets variables that change every run (GITHUB_RUN_ID, CI_JOB_ID...): no build reads
    them, so a rebuild still hits; SOURCE_DATE_EPOCH changes the image, so it misses."""
    args = ("build", "-t", "fp/img", str(ctx))
    first = pybuild(*args, env={"GITHUB_RUN_ID": "1001", "CI_JOB_ID": "7"})
    hit = pybuild(*args, env={"GITHUB_RUN_ID": "1002", "CI_JOB_ID": "8", "RANDOM_NOISE": "x"})
    assert hit.hit and hit.digest == first.digest
    pinned = pybuild(*args, env={"GITHUB_RUN_ID": "1003", "SOURCE_DATE_EPOCH": "86400"})
    assert not pinned.hit and pinned.digest != first.digest
    assert pybuild(*args, env={"GITHUB_RUN_ID": "1004", "SOURCE_DATE_EPOCH": "86400"}).hit


def test_build_arg_taken_from_the_environment_is_fingerprinted(
        pybuild: Callable[..., Run], ctx: Path) -> None:
    """``--build-arg NAME`` reads $NAME: the fast path compares it, though NAME is not in
    the list of variables every build reads."""
    args = ("build", "-t", "fp/img", "--build-arg", "FLAVOUR", str(ctx))
    pybuild(*args, env={"FLAVOUR": "a"})
    assert pybuild(*args, env={"FLAVOUR": "a", "GITHUB_RUN_ID": "9"}).hit
    assert not pybuild(*args, env={"FLAVOUR": "b"}).hit


def _environment_reads(path: Path) -> list[tuple[int, str | None]]:
    """(line, variable name or None when not a literal) of each environment read in a file."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads: list[tuple[int, str | None]] = []

    def literal(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    for node in ast.walk(tree):
        is_environ = (isinstance(node, ast.Attribute) and node.attr in ("environ", "environb")
                      and isinstance(node.value, ast.Name) and node.value.id == "os")
        is_getenv = (isinstance(node, ast.Attribute) and node.attr == "getenv"
                     and isinstance(node.value, ast.Name) and node.value.id == "os")
        if not (is_environ or is_getenv):
            continue
        parent = parents.get(node)
        name: str | None = None
        if is_getenv and isinstance(parent, ast.Call):
            name = literal(parent.args[0] if parent.args else None)
        elif isinstance(parent, ast.Subscript):
            name = literal(parent.slice)
        elif isinstance(parent, ast.Attribute) and parent.attr == "get":
            call = parents.get(parent)
            if isinstance(call, ast.Call) and call.args:
                name = literal(call.args[0])
        elif isinstance(parent, ast.Compare) and isinstance(parent.ops[0], (ast.In, ast.NotIn)):
            name = literal(parent.left)
        reads.append((node.lineno, name))
    return reads


def test_every_environment_read_of_the_builder_is_fingerprinted() -> None:
    """A variable the builder reads can change a build: the fast path must compare it.
    Add a new one to ``builder.fastpath.BUILD_ENVIRONMENT`` (or say there why not)."""
    from builder.fastpath import (
        BUILD_ENVIRONMENT,
        COMMAND_ENVIRONMENT,
        ENVIRONMENT_READERS,
        covers,
    )

    unlisted = []
    for path in sorted((ROOT / "builder").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for line, name in _environment_reads(path):
            if name is None:
                if rel not in ENVIRONMENT_READERS:
                    unlisted.append(f"{rel}:{line}: reads a variable whose name is not a literal")
            elif not covers(name) and name not in COMMAND_ENVIRONMENT:
                unlisted.append(f"{rel}:{line}: reads ${name}")
    assert not unlisted, "\n".join(unlisted)
    assert covers("SOURCE_DATE_EPOCH") and covers("PYBUILD_INSECURE_REGISTRIES")
    assert not covers("GITHUB_RUN_ID") and not covers("PYBUILD_FASTPATH_DEBUG")
    assert "DOCKER_CONFIG" in BUILD_ENVIRONMENT  # credentials (registry.client.auth) for base pulls


def test_a_lowercase_dockerfile_takes_the_fast_path_and_notices_its_ignore_file(
        pybuild: Callable[..., Run], ctx: Path) -> None:
    """With no ``Dockerfile``, the build reads ``dockerfile`` (as docker build does), and
    the fast path fingerprints that file and ``Dockerfile.dockerignore``, the one the
    build reads."""
    (ctx / "Dockerfile").rename(ctx / "dockerfile")
    args = ("build", "-t", "fp/img", str(ctx))
    first = pybuild(*args)
    again = pybuild(*args)
    assert again.hit and again.digest == first.digest
    (ctx / "Dockerfile.dockerignore").write_text("sub\n")
    time.sleep(0.2)
    assert not pybuild(*args).hit
    assert pybuild(*args).hit


@pytest.mark.parametrize("base", ["scratch", "oci-layout"])
def test_two_images_built_in_turn_in_one_storage_both_take_the_fast_path(
        pybuild: Callable[..., Run], tmp_path: Path, base: str,
        request: pytest.FixtureRequest) -> None:
    """A fully cached build writes nothing to the build cache (a step's use is recorded at
    most once an hour), so it does not invalidate the other image's fast-path record. Nor
    to the store when it reads an ``oci-layout://`` base again: the base's blobs, already
    linked to the base's holder, are not linked again (a write to ``meta.db``)."""
    image = "scratch" if base == "scratch" else request.getfixturevalue("busybox_ref")
    contexts = []
    for name in ("one", "two"):
        where = tmp_path / name
        where.mkdir()
        (where / "Dockerfile").write_text(f"FROM {image}\nCOPY a /a\n")
        (where / "a").write_text(f"{name}\n")
        contexts.append((name, where))
    # older than the build cache's racy window: the first build remembers the files' hashes
    # (a write to the build cache), not one of the later ones
    time.sleep(RACY_NS / 1e9 + 0.1)
    runs = [pybuild("build", "-q", "-t", f"{name}:1", str(where))
            for _ in range(3) for name, where in contexts]
    # The third build misses: the second (another image) wrote to the storage since its
    # record. From then on nothing is written: every build is answered from its record.
    assert [r.hit for r in runs] == [False, False, False, True, True, True]
    assert runs[4].digest == runs[2].digest == runs[0].digest
    assert runs[5].digest == runs[3].digest == runs[1].digest != runs[0].digest


def _uses(storage: Path) -> dict[str, float]:
    """Each cached step's last recorded use (a Julian day, as cache.db keeps it). Read
    as pybuild reads it (not ``mode=ro``, which leaves an empty write-ahead log behind: a
    change to the storage's state)."""
    with contextlib.closing(sqlite3.connect(storage / "builder" / "cache.db")) as db:
        return dict(db.execute("SELECT key, used FROM steps").fetchall())


# What a hit does not import: the CLI, the builder, the build cache; sqlite3 only to
# record a use (once an hour).
WATCHED = ("click", "builder.build", "builder.cache", "sqlite3")


def fast_path_later(tmp_path: Path, args: tuple[str, ...], seconds: float) -> str:
    """``pybuild build ARGS`` (in the ``pybuild`` fixture's storage and directory) answered
    by the fast path alone, as it would be ``seconds`` from now (the clock moved on): the
    fast path's debug lines and output, then HIT or MISS with the modules of
    :data:`WATCHED` it imported."""
    code = ("import sys, time\n"
            "now = time.time\n"
            f"time.time = lambda: now() + {seconds}\n"
            "import builder.fastpath as f\n"
            "ok = f.try_fast_path(sys.argv[1:])\n"
            f"print('HIT' if ok else 'MISS', [m for m in {WATCHED!r} if m in sys.modules], "
            "file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code, args[0], "--storage",
                           str(tmp_path / "storage"), *args[1:]],
                          capture_output=True, text=True, cwd=tmp_path, check=False,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_FASTPATH_DEBUG="1"))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_hit_records_the_use_of_the_cached_steps_once_an_hour(
        pybuild: Callable[..., Run], ctx: Path, tmp_path: Path) -> None:
    """A hit uses the build's cached steps, as a cached build does: once their last
    recorded use is USE_EVERY old it records their use (else the build cache's GC would
    take the steps of an image only the fast path rebuilds), files its record again, and
    writes nothing more until USE_EVERY has passed again."""
    args = ("build", "-t", "fp/img", str(ctx))
    pybuild(*args)
    assert pybuild(*args).hit
    storage = tmp_path / "storage"
    before = _uses(storage)
    assert before
    written = os.stat(storage / "builder" / "cache.db")
    out = fast_path_later(tmp_path, args, 30)  # not due
    assert out.startswith("fastpath: hit") and out.endswith("\nHIT []\n"), out
    assert os.stat(storage / "builder" / "cache.db") == written

    later = 2 * USE_EVERY
    out = fast_path_later(tmp_path, args, later)
    after = _uses(storage)
    assert set(after) == set(before)
    assert all(after[key] - before[key] > (later - 60) / 86400 for key in before)
    assert out.startswith("fastpath: recorded the use of the cached steps\nfastpath: hit\n")
    assert out.endswith("\nHIT ['sqlite3']\n"), out
    # within the hour after that use: a hit again, and no write
    written = os.stat(storage / "builder" / "cache.db")
    out = fast_path_later(tmp_path, args, later + USE_EVERY / 2)
    assert out.startswith("fastpath: hit") and out.endswith("\nHIT []\n"), out
    assert os.stat(storage / "builder" / "cache.db") == written
    assert pybuild(*args).hit  # the record filed again holds cache.db's new state


def test_the_fast_path_records_uses_as_often_as_the_build_cache() -> None:
    from builder.cache.sqlite import USE_EVERY as CACHE_USE_EVERY

    assert USE_EVERY == CACHE_USE_EVERY


def test_steps_of_an_image_only_the_fast_path_rebuilds_stay_in_the_cache(
        pybuild: Callable[..., Run], tmp_path: Path, busybox_ref: str) -> None:
    """Days later, an image rebuilt since only through the fast path keeps its cached
    steps when the build cache's GC takes the least recently used ones: those of the image
    no build used since go, and the next build of the first image runs nothing."""
    contexts = {}
    for name in ("used", "unused"):
        where = tmp_path / name
        where.mkdir()
        (where / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN echo {name} > /f\n")
        contexts[name] = ("build", "--progress", "plain", "-t", f"{name}:1", str(where))
    time.sleep(RACY_NS / 1e9 + 0.1)  # older than the racy windows: no later write
    pybuild(*contexts["used"])
    pybuild(*contexts["unused"])
    assert not pybuild(*contexts["used"]).hit  # (the other build wrote to the storage)
    days = 3 * 86400
    assert "fastpath: hit" in fast_path_later(tmp_path, contexts["used"], days)
    storage = tmp_path / "storage"
    with contextlib.closing(sqlite3.connect(storage / "builder" / "cache.db")) as db:
        keys = {name: {key for key, in db.execute(
            "SELECT key FROM steps WHERE instruction LIKE ?", (f"%echo {name} %",))}
            for name in contexts}
    assert all(keys.values())
    # as after a build that began then: the least recently used steps go, within 1 byte
    report = asyncio.run(autogc.collect(storage, 1, time.time() + days))
    assert report is not None and report.steps == len(keys["unused"])
    assert set(_uses(storage)) & (keys["used"] | keys["unused"]) == keys["used"]
    again = pybuild(*contexts["used"], normal=True)
    assert "#2 [2/2] RUN echo used > /f\n#2 CACHED\n" in again.progress, again.progress
