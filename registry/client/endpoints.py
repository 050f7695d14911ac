"""Where an image is: the ``SRC``/``DST`` transports of ``pybuild copy`` (as skopeo
spells them), parsed into an :class:`Endpoint`::

    docker://REF  or a bare REF      a registry ([host[:port]/]name[:tag][@digest])
    local:REF                        pybuild's local image store (``pybuild images``)
    oci:DIR[:TAG]                    an OCI image layout directory (TAG: its ref.name,
                                     anything after DIR's first colon, as for skopeo;
                                     a source's @N: its N-th image, from 0)
    oci-archive:FILE[:TAG]           the same in a tar (:mod:`registry.client.oci_archive`)
    docker-archive:FILE[:REF]        a ``docker save`` tarball (REF name[:tag], no digest;
                                     a source's @N: its N-th image, from 0)

The other transports skopeo knows are refused by name (:func:`check_transport`), never
read as Docker Hub references.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .refs import ImageRef, InvalidReference, parse_image_ref

__all__ = ["SKOPEO_TRANSPORTS", "SUPPORTED", "TRANSPORTS", "Endpoint", "check_transport", "parse_endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an image is. ``kind``: registry, local, oci, oci-archive or docker-archive."""

    kind: str
    ref: ImageRef | None = None
    path: Path | None = None
    name: str | None = None  # oci tag or archive reference

    def __str__(self) -> str:
        if self.kind in ("registry", "local"):
            return f"{'local:' if self.kind == 'local' else ''}{self.ref}"
        return f"{self.kind}:{self.path}{':' + self.name if self.name else ''}"


# The transports skopeo (containers/image) knows. A name of one is never taken for an
# image on Docker Hub: ``containers-storage:foo`` pushed to docker.io/library/containers-storage
# would be a surprise, and a leak.
SKOPEO_TRANSPORTS = ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir",
                     "containers-storage", "sif", "tarball", "ostree")
# How each transport pybuild reads and writes begins (a bare REF aside).
TRANSPORTS = ("docker://", "local:", "oci:", "oci-archive:", "docker-archive:")
SUPPORTED = ("docker://REF (or a bare REF), local:REF, oci:DIR[:TAG], oci-archive:FILE[:TAG], "
             "docker-archive:FILE[:REF]")
_SCHEME = re.compile(r"^([a-z][a-z0-9_-]*):(.*)$", re.DOTALL)


def check_transport(text: str) -> None:
    """ValueError when ``text`` starts with a transport pybuild does not read or write:
    one skopeo knows, or ``NAME:`` followed by a path (``x:/dir``, ``x:./f``), which no
    image reference is (a tag holds no ``/``, a port only digits)."""
    m = _SCHEME.match(text)
    if m is None or text.startswith(TRANSPORTS):
        return
    name, rest = m.groups()
    if re.match(r"\d+/", rest):
        return  # host:port/name, a reference
    if name == "docker":
        raise ValueError(f"{text!r}: the docker transport is written docker://REF (or a bare REF)")
    if name in ("http", "https") and rest.startswith("//"):
        raise ValueError(f"{text!r}: an image reference has no URL scheme: name it {rest[2:]} "
                         "(loopback and --insecure registries are asked over plain HTTP)")
    if name in SKOPEO_TRANSPORTS:
        raise ValueError(f"unsupported transport {name}; pybuild reads/writes: {SUPPORTED}")
    if "/" in rest:
        raise ValueError(f"unknown transport {name} in {text!r}; pybuild reads/writes: {SUPPORTED}")


def parse_endpoint(text: str) -> Endpoint:
    """Parse a transport string (see the module docstring); ValueError says what is wrong."""
    check_transport(text)
    try:
        if text.startswith("docker://"):
            return Endpoint("registry", parse_image_ref(text[len("docker://"):]))
        if text.startswith("local:"):
            return Endpoint("local", parse_image_ref(text[len("local:"):]))
        for kind in ("oci", "oci-archive"):
            if text.startswith(f"{kind}:"):
                # The path ends at the first colon, as for skopeo (containers/image's
                # SplitPathAndImage): the name after it may hold colons and slashes, as
                # the full references podman writes do (127.0.0.1:5000/app:1).
                path, _, tag = text[len(kind) + 1:].partition(":")
                if not path:  # Path("") is the current directory: skopeo refuses it too
                    raise ValueError(f"{text}: the path is empty; " + (
                        "name the layout directory (oci:DIR[:TAG]; oci:. for this one)"
                        if kind == "oci" else "name the archive (oci-archive:FILE[:TAG])"))
                return Endpoint(kind, path=Path(path), name=tag or None)
        if text.startswith("docker-archive:"):
            path, _, ref = text[len("docker-archive:"):].partition(":")
            if re.fullmatch(r"@[0-9]{1,9}", ref):  # the image at that place (from 0)
                return Endpoint("docker-archive", path=Path(path), name=ref)
            named = parse_image_ref(ref) if ref else None
            if named is not None and named.digest is not None:
                # RepoTags (and the old ``repositories`` file) hold name:tag only.
                raise ValueError(f"docker-archive:{path}:{ref}: the reference does not include a "
                                 "tag; a docker archive names its images name:tag (drop the @digest)")
            return Endpoint("docker-archive", path=Path(path), name=str(named) if named else None)
        return Endpoint("registry", parse_image_ref(text))
    except InvalidReference as exc:
        raise ValueError(str(exc)) from exc
