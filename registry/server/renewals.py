"""What a read by a caller about to push keeps from retention (retention.py).

Before a push, clients ask whether the registry already has what they would send: docker,
skopeo and containerd ``HEAD`` each blob; ``docker buildx imagetools create``, skopeo and
regctl ``HEAD`` (or ``GET``) by digest each manifest the index they push will list. On a
yes they skip it and later ``PUT`` the manifest (index) that needs it. A retention run in
between must not take what they were told is there, so such a read renews what
retention looks at:

- a blob ``HEAD`` makes the repository's link to the blob again, dated now: retention
  keeps a link made less than ``upload_grace`` ago (:func:`renew_blob_link`);
- a manifest ``HEAD`` or ``GET`` by digest dates the manifest pushed now, as a ``PUT`` of
  it again would, when retention could otherwise take it within ``upload_grace`` (pushed
  more than ``untagged_delay`` - ``upload_grace`` ago): it stays at least the grace after
  the read (:func:`renew_manifest`). A manifest is written at most once per
  ``untagged_delay`` - ``upload_grace``: reads stay reads, since every write moves the
  metadata's generation and each process's manifest cache then asks again.

Only a caller granted push on the repository renews (:func:`may_push`): one that may only
pull cannot push what it asked about, and must not keep a blob or manifest past
retention by asking again and again. A read-only registry renews nothing.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from cas import BlobUnknown, Digest
from cas.holders import repository_holder

from ..errors import BLOB_UNKNOWN
from .access import Grant
from .auth import BasicAuth
from .state import GRANT, REGISTRY, Registry

__all__ = ["REMEMBERED_MANIFESTS", "may_push", "renew_blob_link", "renew_manifest"]

log = logging.getLogger("pybuild.registry.retention")

# Manifests whose push time a process remembers (~200 bytes each).
REMEMBERED_MANIFESTS = 16384


def may_push(request: web.Request, name: str) -> bool:
    """Whether the request's caller is granted push on repository ``name``, as
    authenticating the request decided (nothing is verified again): what its bearer token
    grants (:data:`~registry.server.state.GRANT`, set by ``tokens.TokenAuth``); with
    basic auth (htpasswd: every user may push, as in Distribution) or without auth, yes.
    An authorizer that leaves no grant otherwise: no."""
    grant: Grant | None = request.get(GRANT)
    if grant is not None:
        return grant.may_push(name)
    auth = request.app[REGISTRY].auth
    return auth is None or isinstance(auth, BasicAuth)


async def renew_blob_link(reg: Registry, name: str, digest: Digest) -> None:
    """Make ``name``'s link to ``digest`` again, dated now (see the module docstring).
    BLOB_UNKNOWN if the store lost the blob meanwhile; any other failure is logged and
    the read still answered (best effort)."""
    try:
        await reg.store.link(repository_holder(name), digest)
    except BlobUnknown:
        raise BLOB_UNKNOWN(f"blob {digest} is not in the store", detail={"digest": str(digest)}) from None
    except Exception as exc:
        log.warning("HEAD %s@%s: the blob's link was not renewed (%s); retention may take it "
                    "before the upload grace", name, digest, exc)


async def renew_manifest(reg: Registry, name: str, digest: str) -> bool:
    """Date manifest ``digest`` of ``name`` pushed now if retention, as configured, could
    take it within the upload grace (see the module docstring); whether ``name`` still
    holds it (False: a retention run took it since it was read, so the read must answer
    404). When it counts as pushed is remembered (``Registry.manifest_pushed``), so
    the reads in between ask the metadata nothing. A metadata call that fails is logged
    and the manifest counts as held (best effort)."""
    config = reg.config
    keep_for = max(config.retention_untagged_delay - config.retention_upload_grace, 0.0)
    renew_before = time.time() - keep_for
    key = (name, digest)
    memo = reg.manifest_pushed
    pushed = memo.get(key)
    if pushed is not None and pushed >= renew_before:
        memo.move_to_end(key)
        return True
    try:
        pushed = await reg.meta.renew_manifest(name, digest, renew_before)
    except Exception as exc:
        log.warning("%s@%s: the manifest's push time was not renewed (%s); retention may take "
                    "it, if untagged, before the upload grace", name, digest, exc)
        return True
    if pushed is None:
        memo.pop(key, None)
        return False
    memo[key] = pushed
    memo.move_to_end(key)
    while len(memo) > REMEMBERED_MANIFESTS:
        memo.popitem(last=False)
    return True
