"""``pybuild pull/push --all-tags REPOSITORY`` (``-a``): every tag of a repository, as
``docker pull -a`` and ``docker push -a`` take them.

``pull -a`` pulls each tag the registry lists (``GET /v2/<name>/tags/list``, every page);
``push -a`` pushes each tag of the repository in the local store (``pybuild images``). The
tags go one after the other, each as the single-tag command copies it (its progress, its
``--json`` events and result); each is named only once its image is whole, as every copy.
A tag that fails does not stop the others; the command then fails naming each
(:class:`TagsFailed`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ClientError
from .image_store import ImageStore
from .refs import ImageRef, familiar, parse_image_ref
from .remote import ClientOptions, RegistryClient

__all__ = ["TagsFailed", "local_tags", "registry_tags", "repository"]


class TagsFailed(ClientError):
    """Some tags of an ``--all-tags`` transfer failed (the others were copied)."""

    def __init__(self, verb: str, repo: ImageRef, failed: list[tuple[str, str]],
                 total: int) -> None:
        listed = "; ".join(f"{tag}: {message}" for tag, message in failed)
        super().__init__(f"{verb} --all-tags {familiar(str(repo))}: {len(failed)} of {total} tags failed "
                         f"({listed}); the other tags were copied: run it again for these")


def repository(text: str) -> ImageRef:
    """``text`` as a repository, without tag or digest (ValueError naming the fix, as
    docker's ``tag can't be used with --all-tags/-a``)."""
    ref = parse_image_ref(text, default_tag=None)
    if ref.tag is not None or ref.digest is not None:
        raise ValueError(f"{text}: a tag or digest cannot be given with --all-tags/-a: name "
                         f"the repository alone ({familiar(ref.repository)})")
    return ref


async def registry_tags(repo: ImageRef, options: ClientOptions) -> list[str]:
    """Every tag the registry lists for ``repo``."""
    async with RegistryClient(options) as client:
        tags = await client.tags(repo.api_host, repo.name)
    if not tags:
        raise ClientError(f"{familiar(str(repo))} has no tags in its registry: nothing to pull")
    return sorted(set(tags))


async def local_tags(repo: ImageRef, storage: Path | None) -> list[str]:
    """Every tag of ``repo`` in the local store."""
    async with await ImageStore.open(storage) as images:
        refs = [parse_image_ref(image.ref) for image in await images.list()]
    tags = sorted({r.tag for r in refs
                   if r.repository == repo.repository and r.tag is not None and r.digest is None})
    if not tags:
        name = familiar(str(repo))
        raise ClientError(f"no local image of {name} to push (see pybuild images; tag one "
                          f"with pybuild tag IMAGE {name}:TAG)")
    return tags
