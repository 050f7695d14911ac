"""Image references: ``[host[:port]/]name[:tag][@digest]`` with Docker's defaults.

Docker's rules (``distribution/reference``, "normalize"):

- the first path component is a registry host when it contains ``.`` or ``:`` or is
  ``localhost``; otherwise the host is ``docker.io``;
- on ``docker.io`` a one-component name gets ``library/`` (``alpine`` ->
  ``docker.io/library/alpine``);
- no tag and no digest means ``:latest``; with a digest the tag is informational only.

``docker.io`` is reached at ``registry-1.docker.io`` (:attr:`ImageRef.api_host`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm

from ..names import MAX_NAME_LENGTH, is_valid_name, is_valid_tag
from .errors import ClientError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_TAG",
    "ImageRef",
    "InvalidReference",
    "familiar",
    "is_loopback",
    "parse_image_ref",
]

DEFAULT_HOST = "docker.io"
DEFAULT_TAG = "latest"
_DOCKER_HUB_API = "registry-1.docker.io"
_HOST_RE = re.compile(
    r"^(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]{1,5})?$"
)


class InvalidReference(ClientError, ValueError):
    """An image reference that does not parse; the message says what is wrong."""


def familiar(ref: str) -> str:
    """``docker.io/library/app:1`` as Docker says it (``app:1``; ``user/app:1`` for
    ``docker.io/user/app:1``); other registries' names as they are."""
    if not ref.startswith("docker.io/"):
        return ref
    rest = ref[len("docker.io/"):]
    if rest.startswith("library/") and "/" not in rest[len("library/"):]:
        return rest[len("library/"):]
    return rest


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.x.x`` or ``[::1]``, with or without a port.

    Docker talks plain HTTP to these without being told (they never leave the machine).
    """
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.split(":", 1)[0]
    return name == "localhost" or name.startswith("127.") or name == "::1"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference. ``tag`` is set unless only a digest was given."""

    host: str
    name: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        """Where the Distribution API lives (Docker Hub's API host differs from its name)."""
        return _DOCKER_HUB_API if self.host == DEFAULT_HOST else self.host

    @property
    def reference(self) -> str:
        """What goes in ``/v2/<name>/manifests/<reference>``: the digest if any, else the tag."""
        return str(self.digest) if self.digest is not None else (self.tag or DEFAULT_TAG)

    @property
    def repository(self) -> str:
        """``host/name`` (the repository, without tag or digest)."""
        return f"{self.host}/{self.name}"

    def with_tag(self, tag: str | None) -> ImageRef:
        return ImageRef(self.host, self.name, tag, None)

    def with_digest(self, digest: Digest) -> ImageRef:
        return ImageRef(self.host, self.name, self.tag, digest)

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse_image_ref(text: str, *, default_tag: str | None = DEFAULT_TAG) -> ImageRef:
    """Parse and normalise ``text``; raises :class:`InvalidReference` naming the bad part.

    ``default_tag`` is used when neither a tag nor a digest is given (``None`` keeps the
    reference untagged, e.g. for ``pybuild rmi`` matching).
    """
    original = text
    if not text or text != text.strip():
        raise InvalidReference(f"invalid image reference {original!r}: empty or padded with spaces")
    digest = None
    if "@" in text:
        text, _, digest_text = text.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except (InvalidDigest, UnsupportedDigestAlgorithm) as exc:
            raise InvalidReference(f"invalid image reference {original!r}: {exc}") from exc
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not is_valid_tag(tag):
            raise InvalidReference(
                f"invalid image reference {original!r}: tag {tag!r} must match "
                "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
            )
    host = DEFAULT_HOST
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _HOST_RE.match(first):
            raise InvalidReference(f"invalid image reference {original!r}: bad host {first!r}")
        host, text = first, rest
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DEFAULT_HOST
    if host == DEFAULT_HOST and "/" not in text:
        text = f"library/{text}"
    if not is_valid_name(text):
        raise InvalidReference(
            f"invalid image reference {original!r}: repository name {text!r} must be "
            "lowercase components of [a-z0-9] joined by '.', '_', '__' or '-', separated by "
            f"'/', at most {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = default_tag
    return ImageRef(host, text, tag, digest)
