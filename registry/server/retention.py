"""Retention: storage that does not grow without bound, collected online while pushes go on.

One run (:func:`run_retention`) takes each repository in turn:

1. **Policies** (retention_policy.py) choose the tags to delete.
2. **One metadata transaction** (:meth:`RegistryMetadata.collect`) deletes those tags
   (each only if it still points where it did, pushed at the same time), then every
   manifest pushed more than ``untagged_delay`` ago that no tag points at, that no
   remaining index lists and that is not a referrer of a remaining subject (repeatedly,
   so an index's manifests and a removed subject's referrers follow), and says what the
   remaining manifests reference.
3. **One cas transaction** (``Store.unlink_stale``) unlinks, from the repository, the
   blobs nothing remaining references, but only those last linked more than
   ``upload_grace`` ago; cas GC then frees what no holder links any more.

Why a push racing a run loses nothing:

- a manifest pushed by digest and tagged a moment later is younger than the delay, and
  step 2 re-checks "no tag" in the transaction that deletes it (a tag PUT committed first
  keeps it; one committed after brings the record back, with its bytes linked again);
- a blob uploaded for a manifest not pushed yet was linked less than ``upload_grace`` ago;
- what a client about to push was told is there (a blob HEAD, a manifest HEAD or GET by
  digest, from a caller granted push) was renewed by that read (renewals.py): a link made
  again, a manifest dated pushed again, kept for at least ``upload_grace``;
- a manifest PUT links everything it references again (fresh links) *before* its metadata
  transaction, so a blob it relies on is either in the snapshot step 2 reads or too
  young for step 3; an index PUT re-checks its manifests inside its transaction
  (``ManifestsMissing``).

Pull times ("pulled within D days") are noted in memory on each manifest GET
(:class:`~registry.server.pull_log.PullLog`, a dict store) and written in one transaction
every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cas import Digest
from cas.holders import repository_holder

from ..client.transfer import cancel_all
from ..oci import Index, InvalidObject, parse_manifest
from .config import ServerConfig
from .metadata import RegistryMetadata
from .notifications import Notifier
from .pull_log import PullLog
from .retention_policy import Policy, tags_to_delete
from .state import REGISTRY, BlobStore, Registry

__all__ = ["RepositoryReport", "RetentionReport", "RetentionSettings",
           "retention_lifecycle", "run_retention"]

log = logging.getLogger("pybuild.registry.retention")

_PAGE = 500


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    untagged_delay: float = 86400.0
    upload_grace: float = 3600.0
    policies: tuple[Policy, ...] = ()


@dataclass(slots=True)
class RepositoryReport:
    repository: str
    tags: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "tags": self.tags, "manifests": self.manifests,
                "blobs": self.blobs}


@dataclass(slots=True)
class RetentionReport:
    dry_run: bool
    repositories: list[RepositoryReport] = field(default_factory=list)

    @property
    def tags(self) -> int:
        return sum(len(r.tags) for r in self.repositories)

    @property
    def manifests(self) -> int:
        return sum(len(r.manifests) for r in self.repositories)

    @property
    def blobs(self) -> int:
        return sum(len(r.blobs) for r in self.repositories)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "tags": self.tags, "manifests": self.manifests,
                "blobs": self.blobs, "repositories": [r.to_json() for r in self.repositories]}


def _references(body: bytes, media_type: str) -> tuple[str, ...]:
    _, obj = parse_manifest(body, media_type)
    if isinstance(obj, Index):
        return tuple(str(d.digest) for d in obj.manifests)
    return tuple(str(d.digest) for d in obj.references() if not d.nondistributable)


async def _learn_references(store: BlobStore, meta: RegistryMetadata, repo: str) -> None:
    """Record the references of manifests stored without them (before this version, or by
    the pull-through cache), read from their bodies."""
    while digests := await meta.unknown_references(repo, _PAGE):
        for digest in digests:
            record = await meta.get_manifest(repo, digest)
            if record is None:
                continue
            try:
                body = await store.read_bytes(Digest.parse(digest))
                if len(body) > 64 * 1024:  # a big index: not on the event loop
                    refs = await asyncio.to_thread(_references, body, record.media_type)
                else:
                    refs = _references(body, record.media_type)
            except (InvalidObject, KeyError, ValueError) as exc:
                log.warning("retention: %s@%s: cannot read its references (%s); its "
                            "repository's untagged manifests and blobs are kept this run", repo, digest, exc)
                raise _Unreadable from exc
            await meta.set_references(repo, digest, refs)


class _Unreadable(Exception):
    pass


async def _collect_repository(
    store: BlobStore, meta: RegistryMetadata, settings: RetentionSettings, repo: str,
    now: float, dry_run: bool,
) -> RepositoryReport:
    report = RepositoryReport(repo)
    untagged_before = now - settings.untagged_delay
    sweep_links = True
    try:
        await _learn_references(store, meta, repo)
    except _Unreadable:
        # What some manifest references is not known: no untagged manifest (it might be
        # listed by that one) and no blob link goes from this repository this run.
        untagged_before = 0.0
        sweep_links = False
    drop = tags_to_delete(settings.policies, repo, await meta.tag_records(repo), now)
    result = await meta.collect(repo, drop, untagged_before, dry_run=dry_run)
    report.tags = [tag for tag, _ in result.tags]
    report.manifests = [digest for digest, _ in result.manifests]
    if not sweep_links:
        return report
    holder = repository_holder(repo)
    linked = await store.linked(holder)
    unreferenced = [d for d in linked if str(d) not in result.referenced]
    if dry_run:  # the upload grace is checked when it runs
        report.blobs = [str(d) for d in unreferenced]
    elif unreferenced:
        gone = await store.unlink_stale(holder, unreferenced, settings.upload_grace)
        report.blobs = [str(d) for d in gone]
    return report


async def run_retention(
    store: BlobStore,
    meta: RegistryMetadata,
    settings: RetentionSettings,
    *,
    dry_run: bool = False,
    notify: Callable[[RepositoryReport], None] | None = None,
) -> RetentionReport:
    """Apply ``settings`` to every repository, online (see the module docstring); with
    ``dry_run`` nothing changes and the report lists what would go (blobs regardless of
    the upload grace)."""
    report = RetentionReport(dry_run)
    now = time.time()
    last: str | None = None
    while names := await meta.repositories(last, _PAGE):
        last = names[-1]
        for repo in names:
            done = await _collect_repository(store, meta, settings, repo, now, dry_run)
            if done.tags or done.manifests or done.blobs:
                report.repositories.append(done)
                if notify is not None and not dry_run:
                    notify(done)
    return report


def delete_events(done: RepositoryReport, host: str) -> list[dict[str, Any]]:
    """Distribution's ``delete`` events for what retention removed (one per manifest by
    digest, one per tag), as if an operator had sent the DELETEs."""
    request = {"id": str(uuid.uuid4()), "addr": "", "host": host, "method": "DELETE",
               "useragent": "pybuild-retention"}
    events = []
    for target in ([{"digest": d} for d in done.manifests] + [{"tag": t} for t in done.tags]):
        target["repository"] = done.repository
        events.append({"action": "delete", "target": target, "request": request,
                       "actor": {"name": "retention"}})
    return events


_FLUSH_EVERY = 5.0


async def _flush_loop(reg: Registry) -> None:
    while True:
        await asyncio.sleep(_FLUSH_EVERY)
        try:
            if reg.pulls is not None:
                await reg.pulls.flush(reg.meta)
        except Exception:
            log.exception("recording pull times failed; they are retried with the next ones")


async def _retention_loop(reg: Registry, interval: float) -> None:
    host = reg.config.addr
    while True:
        await asyncio.sleep(interval)
        settings = settings_from(reg.config)  # as reloaded (SIGHUP), if it was
        try:
            if reg.pulls is not None:
                await reg.pulls.flush(reg.meta)

            def notify(done: RepositoryReport) -> None:
                for digest in done.manifests:  # only memory: the cache follows the metadata
                    reg.cache.drop(done.repository, digest)
                notifier: Notifier | None = reg.notifier
                if notifier is not None:
                    for event in delete_events(done, host):
                        notifier.publish(event)

            report = await run_retention(reg.store, reg.meta, settings, notify=notify)
            gc = await reg.store.gc(grace=settings.upload_grace)
            log.info(
                "retention: deleted %d tag(s) and %d manifest(s), unlinked %d blob(s); "
                "gc removed %d blob(s), freed %d bytes, kept %d unreferenced blob(s) (%d bytes) "
                "younger than the upload grace",
                report.tags, report.manifests, report.blobs, gc.blobs_removed, gc.bytes_freed,
                gc.blobs_kept_by_grace, gc.bytes_kept_by_grace,
            )
        except Exception:
            log.exception("retention run failed; the next one is in %g s", interval)


def settings_from(config: ServerConfig) -> RetentionSettings:
    return RetentionSettings(
        untagged_delay=config.retention_untagged_delay,
        upload_grace=config.retention_upload_grace,
        policies=config.retention_policies,
    )


async def retention_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """An aiohttp ``cleanup_ctx``: note pull times (unless the registry is read-only), and
    run retention (then cas GC) every ``retention.interval``; stop both at shutdown, the
    pull times noted written.

    Pull times are noted whether or not a policy asks for them yet: a ``pulled_within``
    rule configured later finds the pulls of the time before it (Harbor records them
    always too), not every image looking never pulled."""
    reg = app[REGISTRY]
    interval = reg.config.retention_interval
    if reg.config.read_only and not interval:
        yield
        return
    reg.pulls = PullLog()
    tasks = [asyncio.create_task(_flush_loop(reg))]
    if interval:
        tasks.append(asyncio.create_task(_retention_loop(reg, interval)))
    try:
        yield
    finally:
        await cancel_all(tasks)
        with contextlib.suppress(Exception):
            await reg.pulls.flush(reg.meta)
        reg.pulls = None
