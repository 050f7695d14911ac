"""Builds beside other ``pybuild`` processes on one storage directory (parallel CI jobs,
a developer's second terminal): each runs as its own ``python -m builder`` process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# `python -m builder ARGV...`, except that other processes run `pybuild` commands ($OTHER:
# a JSON list of argvs, one after the other) when the build calls $HOOK (`module:name`,
# `module:Class.method`): what a second terminal's commands may do at that moment.
_BETWEEN = textwrap.dedent("""
    import asyncio, importlib, json, os, subprocess, sys
    import builder.fastpath as fastpath

    module, _, attr = os.environ["HOOK"].partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real = getattr(owner, name)

    def other():
        for argv in json.loads(os.environ["OTHER"]):
            subprocess.run([sys.executable, "-m", "builder", *argv], check=True)

    if asyncio.iscoroutinefunction(real):
        async def hooked(*args, **kwargs):
            other()
            return await real(*args, **kwargs)
    else:
        def hooked(*args, **kwargs):
            other()
            return real(*args, **kwargs)

    setattr(owner, name, hooked)
    sys.argv[0] = "pybuild"
    fastpath.main()
""")


def _pybuild(tmp_path: Path, *args: str, hook: str = "",
             other: tuple[tuple[str, ...], ...] = ()) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_STORAGE=str(tmp_path / "storage"),
               PYBUILD_FASTPATH_DEBUG="1")
    argv = [sys.executable, "-m", "builder", *args]
    if hook:
        env.update(HOOK=hook, OTHER=json.dumps(other))
        env["PYBUILD_NO_FASTPATH"] = "1"  # the normal path, which records
        argv = [sys.executable, "-c", _BETWEEN, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_image_removed_as_the_build_ends_is_named_again_by_the_next_build(
        tmp_path: Path, busybox_ref: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY a /a\n")
    (ctx / "a").write_text("one\n")
    time.sleep(0.2)  # older than the fast path's racy window
    build = ("build", "--progress", "plain", "-t", "app", str(ctx))
    _pybuild(tmp_path, *build)
    # a cached rebuild names the image; `pybuild rmi app` in another terminal removes it
    # before the build has recorded its fingerprint
    _pybuild(tmp_path, *build, hook="builder.fastpath:Recorder.finish", other=(("rmi", "app"),))
    assert "app" not in _pybuild(tmp_path, "images").stdout
    again = _pybuild(tmp_path, *build)
    assert "fastpath: hit" not in again.stderr, "answered from a fingerprint of a removed tag"
    assert "app:latest" in _pybuild(tmp_path, "images").stdout


def test_base_image_removed_and_collected_while_building_stays_for_the_build(
        tmp_path: Path, busybox_ref: str) -> None:
    layout = busybox_ref.removeprefix("oci-layout://")
    _pybuild(tmp_path, "copy", "-q", f"oci:{layout}", "local:example.com/base:1")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM example.com/base:1\nRUN echo built > /built\n")
    # the RUN step has run when, in another terminal, the base image is removed and its
    # blobs collected; the image built still needs the base's layer
    _pybuild(tmp_path, "build", "--progress", "plain", "-t", "app", str(ctx),
             hook="builder.build:tag_images",
             other=(("rmi", "example.com/base:1"), ("storage", "gc", "--grace", "0")))
    _pybuild(tmp_path, "copy", "-q", "local:app", f"oci:{tmp_path / 'out'}:app")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    manifest = json.loads((tmp_path / "out" / "blobs" / "sha256" / index["manifests"][0][
        "digest"].removeprefix("sha256:")).read_text())
    assert len(manifest["layers"]) == 2
    # the build's hold on the base ended with it
    stats = _pybuild(tmp_path, "storage", "stats").stdout
    assert re.search(r"^open ingests: +0$", stats, re.M), stats
    assert "clean" in _pybuild(tmp_path, "storage", "fsck").stdout
