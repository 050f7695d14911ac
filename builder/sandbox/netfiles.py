"""The /etc/hosts and /etc/resolv.conf a RUN step sees, bound read-only over the image's
(and so never part of its layer), written as BuildKit writes them."""

from __future__ import annotations

import os
from pathlib import Path

from .spec import RunSpec

__all__ = ["hosts_file", "resolv_conf"]


def hosts_file(spec: RunSpec) -> str:
    """BuildKit's /etc/hosts (executor/oci/hosts.go), whatever the network: the build
    machine's own names are not the step's business, and a RUN that prints or greps the
    file sees the same lines under both builders."""
    names = f"localhost {spec.hostname}" if spec.hostname else "localhost"
    lines = [f"127.0.0.1\t{names}", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{name}" for name, ip in spec.extra_hosts]
    return "\n".join(lines) + "\n"


def resolv_conf(dest: Path) -> Path | None:
    """A 0644 copy of the build machine's /etc/resolv.conf for the step, under every
    network (as BuildKit writes its own copy, also for ``--network=none``); None when the
    machine has none."""
    try:
        data = Path("/etc/resolv.conf").read_bytes()
    except OSError:
        return None
    dest.write_bytes(data)
    os.chmod(dest, 0o644)
    return dest
