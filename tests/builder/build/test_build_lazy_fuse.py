"""Lazy layers through FUSE (builder.lazyfs), between two runners sharing a registry
cache: runner B's RUN step reads a dependency layer it has not fetched through a FUSE
mount, fetching only the files it reads (counted at a proxy: the big file it does not
read is never fetched); the image equals the one an eager build (FUSE made unusable)
pushes; both against pybuild's registry and CNCF Distribution; and the same as a
non-root user, whose build needs /dev/fuse open to it (docs/rootless.md)."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testkit.registries import distribution_registry, get_manifest, http, pybuild_registry
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import missing, require_root, require_tool
from testkit.users import python_for, temporary_user
from tests.builder.build.conftest import write_base_layout
from tests.helpers.cli import pybuild
from tests.helpers.counting_proxy import counting_proxy

REGISTRIES = {"pybuild": pybuild_registry, "distribution": distribution_registry}
BIG = 3_000_000
DOCKERFILE = """FROM {base}
COPY data/ /data/
RUN mkdir -p /deps && head -c {big} /dev/urandom > /deps/big \\
    && echo small > /deps/small && ln /deps/small /deps/hard && ln -s small /deps/sym \\
    && chown 1234:5678 /deps/small && chmod 640 /deps/small \\
    && rm /data/gone && rm -rf /data/dir && mkdir /data/dir && echo new > /data/dir/new
COPY b.txt /b.txt
RUN {{ cat /deps/small /deps/hard; stat -c '%u:%g %a %h' /deps/small; readlink /deps/sym; \\
      ls /data; ls /data/dir; test ! -e /data/gone && echo gone; cat /b.txt; }} > /out.txt
"""
OUT = "small\nsmall\n1234:5678 640 2\nsmall\ndir\nkeep\nnew\ngone\nb changed\n"


def _context(tmp_path: Path, base: str, *, links: bool = True) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "data" / "dir").mkdir(parents=True)
    dockerfile = DOCKERFILE.format(base=base, big=BIG)
    if not links:
        dockerfile = dockerfile.replace("ln /deps/small /deps/hard", "cp /deps/small /deps/hard")
    (ctx / "Dockerfile").write_text(dockerfile)
    for name in ("gone", "keep", "dir/old"):
        (ctx / "data" / name).write_text(name + "\n")
    (ctx / "b.txt").write_text("b\n")
    return ctx


def _image(addr: str, tag: str) -> tuple[str, list[dict]]:
    got = get_manifest(addr, "ci/app", tag)
    assert got.status == 200, got
    return got.headers.get("Docker-Content-Digest", ""), json.loads(got.body)["layers"]


def _file(addr: str, layer: str, name: str) -> str:
    blob = http(addr, "GET", f"/v2/ci/app/blobs/{layer}").body
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        member = tf.extractfile(name)
        assert member is not None
        return member.read().decode()


def _deps_layer(addr: str) -> str:
    """The cached layer of the step that makes /deps (the largest of the cache's step
    entries): what runner B's RUN reads. The image has it with its times clamped to the
    epoch, another blob."""
    art = json.loads(get_manifest(addr, "ci/cache", "main").body)
    config = json.loads(http(addr, "GET", f"/v2/ci/cache/blobs/{art['config']['digest']}").body)
    steps = [e["layer"] for e in config["entries"] if e["instruction"] not in ("facts", "clamp")]
    return str(max(steps, key=lambda layer: layer["size"])["digest"])


def _build(storage: Path, ctx: Path, *args: str, env: dict[str, str] | None = None
           ) -> tuple[dict[str, str], list[dict]]:
    """Build; returns step name -> "cached" | "ran", and the JSON events."""
    proc = pybuild("build", "--progress", "json", "--storage", str(storage), *args, str(ctx),
                   timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    names = {e["step"]: e["name"] for e in events if e["event"] == "start"}
    status = {names[e["step"]]: "cached" if e["event"] == "cached" else "ran"
              for e in events if e["event"] in ("cached", "done") and e["step"] in names}
    return status, events


def _infos(events: list[dict]) -> list[str]:
    return [e["message"] for e in events if e["event"] == "info"]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_run_reads_a_lazy_layer_through_fuse(kind: str, busybox_ref: str,
                                             tmp_path: Path) -> None:
    ctx = _context(tmp_path, busybox_ref)
    with REGISTRIES[kind](tmp_path / "registry") as registry, \
            counting_proxy(registry.addr) as proxy:
        cache = f"type=registry,ref={proxy.addr}/ci/cache:main"
        common = ("--source-date-epoch", "1700000000", "--cache-from", cache)
        _build(tmp_path / "runner-a", ctx, *common, "--cache-to", f"{cache},mode=max",
               "-t", f"{proxy.addr}/ci/app:a", "--push")
        deps = _deps_layer(proxy.addr)
        art = json.loads(get_manifest(proxy.addr, "ci/cache", "main").body)
        assert any(d["mediaType"] == "application/vnd.pybuild.layer.toc.v1+json"
                   for d in art["layers"])

        (ctx / "b.txt").write_text("b changed\n")
        proxy.log.clear()
        status, events = _build(tmp_path / "runner-b", ctx, *common,
                                "-t", f"{proxy.addr}/ci/app:lazy", "--push")
        fetched = sum(s.body_bytes for s in proxy.blob_gets({deps}))
        assert any("mounted lazily" in m for m in _infos(events)), _infos(events)
        assert [v for k, v in status.items() if "/out.txt" in k] == ["ran"], status
        # the pieces around the small files only (their sizes follow the random bytes
        # cut around them): never the 3 MB file the step does not read
        assert 0 < fetched < BIG // 2, fetched

        proxy.log.clear()
        _, events = _build(tmp_path / "runner-c", ctx, *common,
                           "-t", f"{proxy.addr}/ci/app:eager", "--push",
                           env={"PYBUILD_FUSE_DEVICE": str(tmp_path / "no-fuse")})
        assert any("FUSE is unusable" in m for m in _infos(events)), _infos(events)
        assert sum(s.body_bytes for s in proxy.blob_gets({deps})) >= BIG

        lazy, layers = _image(proxy.addr, "lazy")
        eager, layers_eager = _image(proxy.addr, "eager")
        assert (lazy, layers) == (eager, layers_eager)
        assert layers[:3] == _image(proxy.addr, "a")[1][:3]  # those below b.txt's COPY
        assert _file(proxy.addr, layers[-1]["digest"], "out.txt") == OUT


@contextmanager
def _fuse_mode(mode: int) -> Iterator[None]:
    """/dev/fuse with ``mode`` meanwhile (stock Debian: 0666; some hosts: 0600)."""
    fuse = Path("/dev/fuse")
    if not fuse.exists():
        missing("/dev/fuse is needed (modprobe fuse)")
    before = fuse.stat().st_mode & 0o7777
    os.chmod(fuse, mode)
    try:
        yield
    finally:
        os.chmod(fuse, before)


def test_rootless_build_mounts_lazy_layers_when_dev_fuse_allows(tmp_path: Path) -> None:
    """A non-root runner B (a user namespace with a mount namespace of its own) mounts
    the lazy layer when /dev/fuse is 0666, and fetches it whole, saying why, when it
    is 0600; both push the image a root build pushes."""
    require_root("the rootless tests create a user")
    for tool in ("newuidmap", "newgidmap", "bwrap"):
        require_tool(tool)
    ws = Path(tempfile.mkdtemp(prefix="pybuild-lazy-"))
    os.chmod(ws, 0o755)
    try:
        base = write_base_layout(make_busybox_rootfs(ws / "base" / "rootfs"),
                                 ws / "base" / "layout")
        # (no hard links: a non-root build's step over them copies its root, reading
        # every file: that layer is fetched whole)
        ctx = _context(ws, base, links=False)
        subprocess.run(["chmod", "-R", "a+rX", str(ws)], check=True)
        with temporary_user("pybuild-lz") as user, \
                distribution_registry(tmp_path / "registry") as registry, \
                counting_proxy(registry.addr) as proxy:
            python, env = python_for(user)
            cache = f"type=registry,ref={proxy.addr}/ci/cache:main"
            common = ("--source-date-epoch", "1700000000", "--cache-from", cache)
            _build(ws / "runner-a", ctx, *common, "--cache-to", f"{cache},mode=max",
                   "-t", f"{proxy.addr}/ci/app:a", "--push")
            deps = _deps_layer(proxy.addr)
            (ctx / "b.txt").write_text("b changed\n")
            runs = {}
            for mode, tag in ((0o666, "lazy"), (0o600, "eager")):
                storage = ws / f"runner-{tag}"
                storage.mkdir()
                os.chown(storage, user.uid, user.gid)
                proxy.log.clear()
                with _fuse_mode(mode):
                    done = user.run(*python, "-m", "builder", "build", "--progress", "plain",
                                    "--storage", str(storage), *common, "-t",
                                    f"{proxy.addr}/ci/app:{tag}", "--push", str(ctx), env=env)
                assert done.returncode == 0, done.stderr
                runs[tag] = (done.stderr, sum(s.body_bytes for s in proxy.blob_gets({deps})))
            assert "mounted lazily" in runs["lazy"][0], runs["lazy"][0]
            # the pieces that hold what the step reads: their sizes follow the random
            # bytes cut around them (330 kB seen), far less than the layer either way
            assert 0 < runs["lazy"][1] < BIG // 2
            assert "FUSE is unusable here (cannot open /dev/fuse: Permission denied)" \
                in runs["eager"][0], runs["eager"][0]
            assert runs["eager"][1] >= BIG
            assert _image(proxy.addr, "lazy") == _image(proxy.addr, "eager")
            assert _file(proxy.addr, _image(proxy.addr, "lazy")[1][-1]["digest"],
                         "out.txt") == OUT.replace("640 2", "640 1")
    finally:
        shutil.rmtree(ws, ignore_errors=True)
