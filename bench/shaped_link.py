"""The client benchmark over a shaped link: 1 Gbit/s and 10 ms more per round trip.

The harness makes a network namespace (``ip netns add``) joined to this one by a veth
pair, limits both ends to 1 Gbit/s with ``tc ... tbf``, and starts the registries inside
the namespace on its loopback, each behind :mod:`bench.relay`, which listens on the
namespace's veth address and delays every request byte by 10 ms (this kernel has no
``netem``). Clients run here, so every byte crosses the veth pair once each way; nothing
leaves the machine. Needs root, ``ip`` and ``tc``; the namespace and the veth pair are
removed afterwards.

Rows, for skopeo, pybuild (from Distribution), pybuild from ``pybuild serve`` and docker
(a private ``dockerd`` told the registries are insecure): pull v1 cold, pull v2 over v1,
and push v2 into a registry that holds v1 (Distribution; for ``pybuild+serve``, pybuild's
own registry).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.pybuild_cli import ROOT, pybuild_argv, pybuild_env, timed_run
from bench.report import Measurement
from testkit.docker_engine import start_dockerd, stop_dockerd
from testkit.registries import RunningRegistry, distribution_argv, wait_for_v2
from testkit.registries import pybuild_argv as serve_argv

__all__ = ["Link", "ShapedLinkUnavailable", "bench_shaped", "shaped_link"]

REPO = "bench/client"
RATE = "1gbit"
DELAY = 0.010


class ShapedLinkUnavailable(RuntimeError):
    """The machine cannot make the shaped link (not root, no ip/tc, no veth)."""


@dataclass(frozen=True)
class Link:
    ns: str
    host_dev: str
    ns_dev: str
    host_ip: str
    ns_ip: str

    def exec(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def shape(self, rate: str = RATE) -> None:
        """Limit both ends of the veth pair to ``rate`` (a token bucket; bursts of 1 MB
        are what 1 Gbit/s needs at the kernel's timer granularity)."""
        tbf = ["root", "tbf", "rate", rate, "burst", "1mb", "latency", "50ms"]
        _ip(["tc", "qdisc", "replace", "dev", self.host_dev, *tbf])
        _ip(self.exec(["tc", "qdisc", "replace", "dev", self.ns_dev, *tbf]))


def _ip(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise ShapedLinkUnavailable(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


@contextmanager
def shaped_link() -> Iterator[Link]:
    """A namespace and a veth pair into it (not shaped yet: see :meth:`Link.shape`)."""
    if os.geteuid() != 0:
        raise ShapedLinkUnavailable("making a network namespace needs root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ShapedLinkUnavailable(f"`{tool}` is not installed (iproute2)")
    pid = os.getpid()
    net = 16 + pid % 224
    link = Link(ns=f"pybench{pid}", host_dev=f"pbh{pid}"[:15], ns_dev=f"pbn{pid}"[:15],
                host_ip=f"10.219.{net}.1", ns_ip=f"10.219.{net}.2")
    try:
        _ip(["ip", "netns", "add", link.ns])
        _ip(["ip", "link", "add", link.host_dev, "type", "veth", "peer", "name", link.ns_dev])
        _ip(["ip", "link", "set", link.ns_dev, "netns", link.ns])
        _ip(["ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_dev])
        _ip(["ip", "link", "set", link.host_dev, "up"])
        _ip(link.exec(["ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_dev]))
        _ip(link.exec(["ip", "link", "set", link.ns_dev, "up"]))
        _ip(link.exec(["ip", "link", "set", "lo", "up"]))
        yield link
    finally:
        subprocess.run(["ip", "netns", "del", link.ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", link.host_dev], capture_output=True, check=False)


@contextmanager
def registry_in(link: Link, kind: str, workdir: Path, port: int) -> Iterator[RunningRegistry]:
    """A registry (``distribution`` or ``pybuild``) inside the namespace on 127.0.0.1:port,
    reached through the relay at ``ns_ip:port+1``."""
    workdir.mkdir(parents=True, exist_ok=True)
    inner = f"127.0.0.1:{port}"
    make = distribution_argv(workdir) if kind == "distribution" else serve_argv(workdir / "storage")
    argv = make(inner)
    addr = f"{link.ns_ip}:{port + 1}"
    with ExitStack() as stack:
        log = stack.enter_context(open(workdir / "registry.log", "wb"))
        procs = []
        for cmd in (argv, [sys.executable, "-m", "bench.relay", "--listen", addr, "--to", inner,
                           "--delay", str(DELAY)]):
            proc = subprocess.Popen(link.exec(cmd), stdout=subprocess.DEVNULL, stderr=log,
                                    stdin=subprocess.DEVNULL, cwd=ROOT, env=pybuild_env())
            procs.append(proc)
            stack.callback(_stop, proc)
        wait_for_v2(addr, timeout=60, alive=lambda: all(p.poll() is None for p in procs))
        yield RunningRegistry(kind=kind, addr=addr, storage=workdir / "storage")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pulls(pull: Callable[[str], float]) -> tuple[float, float]:
    os.sync()
    cold = pull("v1")
    return cold, pull("v2")


def bench_shaped(workdir: Path, layout: Path) -> list[Measurement]:
    """Pull and push rows over the shaped link (see the module docstring)."""
    base = workdir / "shaped"
    env = pybuild_env()
    pulls: dict[str, tuple[float, float]] = {}
    pushes: dict[str, float] = {}
    with shaped_link() as link, ExitStack() as stack:
        dist = stack.enter_context(registry_in(link, "distribution", base / "dist", 5000))
        own = stack.enter_context(registry_in(link, "pybuild", base / "serve", 5002))
        targets = {tool: stack.enter_context(registry_in(link, kind, base / f"push-{tool}", port))
                   for tool, kind, port in (("skopeo", "distribution", 5010),
                                            ("pybuild", "distribution", 5012),
                                            ("pybuild+serve", "pybuild", 5014),
                                            ("docker", "distribution", 5016))}
        env["PYBUILD_INSECURE_REGISTRIES"] = ",".join(
            r.addr for r in (dist, own, *targets.values()))
        for served in (dist, own):
            for tag in ("v1", "v2"):
                timed_run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                        f"docker://{served.ref(REPO, tag)}"])
        link.shape()

        dest = base / "skopeo-dest"
        pulls["skopeo"] = _pulls(lambda tag: timed_run(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{dist.ref(REPO, tag)}",
             f"oci:{dest}:{tag}"]))
        pushes["skopeo"] = _push_v2(lambda tag: timed_run(
            ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
             f"docker://{targets['skopeo'].ref(REPO, tag)}"]))
        for tool, served in (("pybuild", dist), ("pybuild+serve", own)):
            storage = base / f"{tool}-store"

            def pull(tag: str, served: RunningRegistry = served, storage: Path = storage) -> float:
                return timed_run(pybuild_argv("pull", "-q", "--storage", str(storage),
                                           served.ref(REPO, tag)), env)

            def push(tag: str, served: RunningRegistry = served, storage: Path = storage,
                     tool: str = tool) -> float:
                return timed_run(pybuild_argv("push", "-q", "--storage", str(storage),
                                           served.ref(REPO, tag), targets[tool].ref(REPO, tag)), env)

            pulls[tool] = _pulls(pull)
            pushes[tool] = _push_v2(push)
        if shutil.which("dockerd"):
            pulls["docker"], pushes["docker"] = _docker(link, dist, targets["docker"])
    unit = f"{RATE.replace('gbit', ' Gbit/s')}, +{DELAY * 1000:.0f} ms per round trip"
    return [
        Measurement(f"shaped link ({unit}): pull v1, cold", "s", False,
                    {k: round(v[0], 3) for k, v in pulls.items()}),
        Measurement("shaped link: pull v2 over v1", "s", False,
                    {k: round(v[1], 3) for k, v in pulls.items()}),
        Measurement("shaped link: push v2 over v1 (the registry holds v1)", "s", False,
                    {k: round(v, 3) for k, v in pushes.items()}),
    ]


def _push_v2(push: Callable[[str], float]) -> float:
    push("v1")
    os.sync()
    return push("v2")


def _docker(link: Link, dist: RunningRegistry, target: RunningRegistry) -> tuple[tuple[float, float], float]:
    """docker pull v1, v2 and docker push of v2 over v1, on a private daemon that may use
    the namespace's registries over plain HTTP."""
    workdir = Path(tempfile.mkdtemp(prefix="pbs", dir="/tmp"))
    engine, proc = start_dockerd(workdir, extra_args=[f"--insecure-registry={dist.addr}",
                                                      f"--insecure-registry={target.addr}"])
    try:
        def pull(tag: str) -> float:
            start = time.perf_counter()
            engine.run("pull", "-q", dist.ref(REPO, tag), timeout=1800)
            return time.perf_counter() - start

        def push(tag: str) -> float:
            engine.run("tag", dist.ref(REPO, tag), target.ref(REPO, tag))
            start = time.perf_counter()
            engine.run("push", "-q", target.ref(REPO, tag), timeout=1800)
            return time.perf_counter() - start

        return _pulls(pull), _push_v2(push)
    finally:
        stop_dockerd(proc, workdir)
