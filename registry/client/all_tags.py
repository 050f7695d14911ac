"""``pybuild pull/push --all-tags REPOSITORY`` (``-a``): every tag of a repository, as
``docker pull -a`` and ``docker push -a`` take them.

``pull -a`` pulls each tag the registry lists (``GET /v2/<name>/tags/list``, every page);
``push -a`` pushes each tag of the repository in the local store (``pybuild images``). The
tags go one after the other, each as the single-tag command copies it (its progress, its
``--json`` events and result); each is named only once its image is whole, as every copy.
A tag that fails does not stop the others; the command then fails naming each
(:class:`TagsFailed`).

``copy --all-tags SRC DST`` copies each tag of the registry repository ``SRC`` to the same
tag of ``DST``, as ``skopeo sync`` does; ``copy --all-repositories HOST[/NS] HOST[/NS]``
does so for every repository the source's ``/v2/_catalog`` lists (every page), under the
same name below the destination's namespace: a registry moved with one command. A
repository that fails does not stop the others (:class:`RepositoriesFailed` names each).
A manifest that no tag names cannot be listed through the API: it is copied by digest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from ..errors import RegistryError
from .endpoints import TRANSPORTS, Endpoint, check_transport
from .errors import ClientError
from .image_store import ImageStore
from .refs import ImageRef, familiar, parse_image_ref
from .remote import ClientOptions, RegistryClient

__all__ = ["RepositoriesFailed", "TagsFailed", "copy_registry", "copy_repository", "copy_tags",
           "local_tags", "registry_repository", "registry_tags", "repository"]

# Copies one image (the CLI's single-tag copy, with its progress and result).
CopyOne = Callable[[Endpoint, Endpoint], Awaitable[None]]


class TagsFailed(ClientError):
    """Some tags of an ``--all-tags`` transfer failed (the others were copied)."""

    def __init__(self, verb: str, repo: ImageRef, failed: list[tuple[str, str]],
                 total: int) -> None:
        listed = "; ".join(f"{tag}: {message}" for tag, message in failed)
        super().__init__(f"{verb} --all-tags {familiar(str(repo))}: {len(failed)} of {total} tags failed "
                         f"({listed}); the other tags were copied: run it again for these")


class RepositoriesFailed(ClientError):
    """Some repositories of ``copy --all-repositories`` failed (the others were copied)."""

    def __init__(self, source: str, failed: list[tuple[str, str]], total: int) -> None:
        listed = "; ".join(f"{repo}: {message}" for repo, message in failed)
        super().__init__(f"copy --all-repositories {source}: {len(failed)} of {total} repositories "
                         f"failed ({listed}); the others were copied: run it again (what is there "
                         "already is not sent again); a repository without tags holds manifests "
                         "named by digest only: copy each by its digest")


def repository(text: str) -> ImageRef:
    """``text`` as a repository, without tag or digest (ValueError naming the fix, as
    docker's ``tag can't be used with --all-tags/-a``)."""
    ref = parse_image_ref(text, default_tag=None)
    if ref.tag is not None or ref.digest is not None:
        raise ValueError(f"{text}: a tag or digest cannot be given with --all-tags/-a: name "
                         f"the repository alone ({familiar(ref.repository)})")
    return ref


def registry_repository(text: str) -> ImageRef:
    """``docker://REPOSITORY`` (or a bare one) as ``copy --all-tags`` takes it: a registry
    repository, without tag or digest (ValueError naming the fix)."""
    check_transport(text)
    if text.startswith(TRANSPORTS) and not text.startswith("docker://"):
        raise ValueError(f"{text}: copy --all-tags copies between registries: name each side "
                         "docker://HOST/REPOSITORY (copy one tag at a time to other transports)")
    return repository(text.removeprefix("docker://"))


async def registry_tags(repo: ImageRef, options: ClientOptions, verb: str = "pull") -> list[str]:
    """Every tag the registry lists for ``repo``."""
    async with RegistryClient(options) as client:
        tags = await client.tags(repo.api_host, repo.name)
    if not tags:
        raise ClientError(f"{familiar(str(repo))} has no tags in its registry: nothing to {verb}")
    return sorted(set(tags))


async def local_tags(repo: ImageRef, storage: Path | None) -> list[str]:
    """Every tag of ``repo`` in the local store."""
    async with await ImageStore.open(storage, reading=True) as images:
        refs = [parse_image_ref(image.ref) for image in await images.list()]
    tags = sorted({r.tag for r in refs
                   if r.repository == repo.repository and r.tag is not None and r.digest is None})
    if not tags:
        name = familiar(str(repo))
        raise ClientError(f"no local image of {name} to push (see pybuild images; tag one "
                          f"with pybuild tag IMAGE {name}:TAG)")
    return tags


async def copy_tags(verb: str, repo: ImageRef, tags: list[str], src: Callable[[str], Endpoint],
                    dst: Callable[[str], Endpoint], copy_one: CopyOne) -> None:
    """Copy each of ``tags`` from ``src(tag)`` to ``dst(tag)``; a tag that fails does not
    stop the others (TagsFailed names each)."""
    failed: list[tuple[str, str]] = []
    for tag in tags:
        try:
            await copy_one(src(tag), dst(tag))
        except (ClientError, RegistryError) as exc:  # the tag's; a full disk stops them all
            failed.append((tag, " ".join(str(exc).split())))
    if failed:
        raise TagsFailed(verb, repo, failed, len(tags))


async def copy_repository(source: str, destination: str, options: ClientOptions,
                          copy_one: CopyOne) -> None:
    """``copy --all-tags``: every tag of registry repository ``source`` to the same tag of
    ``destination``."""
    src, dst = registry_repository(source), registry_repository(destination)
    tags = await registry_tags(src, options, "copy")
    await copy_tags("copy", src, tags, lambda tag: Endpoint("registry", src.with_tag(tag)),
                    lambda tag: Endpoint("registry", dst.with_tag(tag)), copy_one)


def registry_namespace(text: str) -> tuple[ImageRef, str]:
    """``docker://HOST[/NAMESPACE]`` (or without ``docker://``): a reference to the registry
    (its name a placeholder) and the namespace, ``""`` for the whole registry."""
    bare = text.removeprefix("docker://").rstrip("/")
    host, _, namespace = bare.partition("/")
    if not host or ("." not in host and ":" not in host and host != "localhost") \
            or (text.startswith(TRANSPORTS) and not text.startswith("docker://")):
        raise ValueError(f"{text}: copy --all-repositories names registries: HOST[:PORT] or "
                         "HOST[:PORT]/NAMESPACE (docker://127.0.0.1:5000, registry.example/team)")
    ref = repository(f"{host}/{namespace or 'x'}")  # checks the namespace's spelling
    return ref, namespace


async def copy_registry(source: str, destination: str, options: ClientOptions,
                        copy_one: CopyOne) -> None:
    """``copy --all-repositories``: every repository under ``source``'s namespace that its
    catalog lists, each with ``copy --all-tags``, to the same name under ``destination``'s."""
    (src, src_ns), (dst, dst_ns) = registry_namespace(source), registry_namespace(destination)
    async with RegistryClient(options) as client:
        listed = await client.catalog(src.api_host)
    names = [n for n in listed if not src_ns or n.startswith(f"{src_ns}/")]
    if not names:
        raise ClientError(f"{source}: the registry's catalog lists no repository"
                          f"{' under ' + src_ns if src_ns else ''}: nothing to copy")
    failed: list[tuple[str, str]] = []
    for name in names:
        rest = name[len(src_ns) + 1:] if src_ns else name
        target = f"{dst_ns}/{rest}" if dst_ns else rest
        try:
            await copy_repository(f"docker://{src.host}/{name}", f"docker://{dst.host}/{target}",
                                  options, copy_one)
        except (ClientError, RegistryError, ValueError) as exc:
            failed.append((name, " ".join(str(exc).split())))
    if failed:
        raise RepositoriesFailed(source, failed, len(names))
