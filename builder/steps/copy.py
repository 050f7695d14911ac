"""``COPY``, ``ADD`` and ``WORKDIR``'s directory: files written straight into a fresh
upper dir (no sandbox), which becomes the layer.

Docker's rules: a directory source copies its *contents*; several sources (or a
wildcard) need a destination ending in ``/``; a destination ending in ``/`` or naming an
existing directory receives the source by its base name; a relative destination is
relative to WORKDIR; missing parents are created (0755, root). Parents that exist in the
stage keep their metadata (they are copied up as overlayfs would). ``--chown`` takes
ids or names from the stage's /etc/passwd and /etc/group; ``--chmod`` octal or symbolic
(:mod:`.chmod`); ``--exclude``
patterns (``.dockerignore`` syntax) relative to the source. ``ADD`` unpacks a local
tar archive (plain, gzip, bzip2, xz, zstd; told by its content, see :mod:`.archives`)
safely and downloads ``http(s)://`` URLs.

``--link`` (as BuildKit, which then copies onto an empty layer and merges it): the layer
is made without looking at the stage's files -- the destination is taken literally (no
symlinked parents followed; a directory only when it ends in ``/``), its parents are
created fresh (0755, root or ``--chown``) -- so its cache entry holds whatever the
earlier steps were. ``--chown`` names are still looked up in the stage's /etc/passwd and
/etc/group. With ``--chmod`` BuildKit does not link, and neither does this.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import stat
from pathlib import Path
from typing import Any

import blake3

from ..context import AnyStat, ContextError, DiskPath, Source, SourceTree, hash_path, unreadable
from ..dockerfile.instructions import Add, Copy, Workdir
from ..git_fetch import is_git_url
from ..ignore import IgnoreMatcher
from ..image import ImageState
from ..layers.changeset import path_sort_key
from ..layers.errors import LayerError
from ..layers.rootwalk import SymlinkLoop, walk_in_root
from ..sandbox.rootfs import lower_stat
from .archives import is_archive
from .chmod import parse_chmod
from .common import (
    BuildError,
    StepEnv,
    cached_facts,
    instruction_text,
    layer_step,
    lower_facts,
    valid_facts,
    valid_files,
)
from .copy_write import CopyItem, write_items
from .copyup import copy_up_lookup, lowers_lookup, make_parents, no_copy_up, stage_lowers
from .download import check_checksum_sources, download, fetch_git, sha256_file
from .metadata import clean_path, resolve_workdir, workdir_value
from .owners import check_mapped, chown_ids, workdir_owner
from .parents import resolve_parents

__all__ = ["copy_instruction", "workdir_instruction"]


def resolve_in_lowers(lowers: list[Path], path: str, *, follow_final: bool) -> str:
    """``path`` (absolute, in the image) with the symlinks the stage's layers have on
    its way resolved inside the image, as the kernel would in the container: ``/bin/x``
    is ``/usr/bin/x`` when ``/bin -> usr/bin``. Writing to the resolved path keeps such
    symlinks intact instead of shadowing them with a directory."""
    try:
        done = walk_in_root(path.split("/"), follow_final=follow_final,
                            lstat=lambda c: lower_stat(lowers, "/".join(c)),
                            readlink=lambda c: _link_target(lowers, "/".join(c)))
    except SymlinkLoop as exc:
        done = exc.resolved  # the kernel would fail (ELOOP): keep what resolved
    return "/" + "/".join(done)


def _destination(lowers: list[Path], dest: str) -> str:
    """Where COPY writes: the destination with every symlink on it resolved, the last
    one too, as BuildKit resolves it: ``COPY tz /etc/localtime`` with ``/etc/localtime ->
    /usr/share/zoneinfo/UTC`` writes the zoneinfo file and keeps the symlink (a symlink
    to a directory receives the sources). Names inside the destination are not followed."""
    return resolve_in_lowers(lowers, dest, follow_final=True)


def _no_file_in_the_way(lowers: list[Path], dest: str, is_dir: bool, where: str) -> None:
    """BuildError when a directory ``dest`` needs (a parent, or ``dest`` itself when
    ``is_dir``) is a file of the stage: BuildKit fails there ("not a directory") rather
    than replace the file."""
    parts = dest.strip("/").split("/")
    for n in range(1, len(parts) + (1 if is_dir else 0)):
        path = "/".join(parts[:n])
        st = lower_stat(lowers, path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise BuildError(where, f"/{path} is a file in the image, not a directory, so "
                             f"{dest} cannot be made; fix the destination, or remove the "
                             "file in an earlier step")


def _no_directory_onto_a_file(items: list[CopyItem], dest: str, where: str) -> None:
    """BuildError when a directory's contents (or an archive's) would go into ``dest``,
    a file of the stage: BuildKit fails ("cannot copy to non-directory") rather than
    replace the file with a directory."""
    rel = dest.strip("/")
    for it in items:
        if it.dest == rel and (it.archive or (it.path is None and it.st is None and it.data is None)):
            what = "an archive unpacks" if it.archive else "a directory's contents go"
            raise BuildError(where, f"{dest} is a file in the image, and {what} into a "
                             "directory there; copy to another path, or remove the file in an "
                             "earlier step")


def _link_target(lowers: list[Path], rel: str) -> str:
    for lower in lowers:
        p = lower / rel
        if os.path.islink(p):
            return os.readlink(p)
    return rel


def _paths_to_flatten(sources: list[str], parents: bool) -> tuple[str, ...]:
    """The paths (relative) a ``COPY --from`` copies (``/app/dist/``, ``/go/bin/app``):
    where each is a directory or a file, only they need be flattened (a link on the way:
    the whole stage, ``flatten_subtree`` says so); () for anything else (wildcards)."""
    paths = tuple(dict.fromkeys(posixpath.normpath(s.strip("/")) for s in sources))
    if parents or any(set(s) & set("*?[\\") for s in sources):
        return ()
    if any(p in (".", "..") or p.startswith("../") for p in paths):
        return ()
    return paths


def _plan(tree: SourceTree, srcs: list[str], dest: str, dest_is_dir: bool, unpack: bool,
          excludes: IgnoreMatcher) -> tuple[list[CopyItem], dict[str, str]]:
    items: list[CopyItem] = []
    hashes: dict[str, str] = {}
    sources: list[Source] = []
    for s in srcs:
        sources.extend(tree.resolve(s, allow_empty_wildcard=True))
    sources = [s for s in sources if not excludes.excluded(s.rel)]
    if len(sources) > 1 and not dest_is_dir:
        raise ContextError(f"copying {len(sources)} sources needs a destination ending "
                           f"with '/' (got {dest!r})")
    # Which files are hard links of one another (within a source, see write_items) is part of
    # the result, so part of the cache key: (source, inode) -> the first path that has it.
    inodes: dict[tuple[int, int, int], str] = {}
    # hashed together, below: the key of each file, and its (disk path, lstat)
    keys: list[str] = []
    to_hash: list[tuple[DiskPath, AnyStat]] = []
    of_source: list[int] = []

    for i, src in enumerate(sources):
        if src.is_dir:
            base = dest.rstrip("/")
            if base:
                items.append(CopyItem(base, None, None, source=i))
            for rel, path, fst in tree.walk(src):
                if excludes.excluded(rel):
                    continue
                items.append(CopyItem(f"{base}/{rel}" if base else rel, path, fst, source=i,
                                   keep_owner=tree.keep_owners))
                keys.append(f"{src.rel}/{rel}")
                to_hash.append((path, fst))
                of_source.append(i)
            continue
        st = os.stat(src.path)
        name = posixpath.basename(src.rel)
        target = f"{dest.rstrip('/')}/{name}" if dest_is_dir else dest
        if unpack and is_archive(src.path):
            items.append(CopyItem(dest.rstrip("/"), src.path, st, archive=True, source=i))
        else:
            items.append(CopyItem(target.lstrip("/"), src.path, st, source=i,
                               keep_owner=tree.keep_owners))
        keys.append(src.rel)
        to_hash.append((src.path, st))
        of_source.append(i)
    digests = tree.hash_files(to_hash)
    for rel, (disk, any_st), digest, i in zip(keys, to_hash, digests, of_source):
        digest += tree.owner_key(disk, any_st)
        if stat.S_ISREG(any_st.st_mode) and any_st.st_nlink > 1:
            first = inodes.setdefault((i, any_st.st_dev, any_st.st_ino), rel)
            if first != rel:
                digest += f" link:{first}"
        hashes[rel] = digest
    return items, hashes


def _plan_parents(tree: SourceTree, srcs: list[str], dest: str,
                  excludes: IgnoreMatcher) -> tuple[list[CopyItem], dict[str, str]]:
    """``COPY --parents`` (see :mod:`.parents`): each source keeps its parents under
    ``dest``, a directory."""
    items: dict[str, CopyItem] = {}
    hashes: dict[str, str] = {}
    base = dest.rstrip("/")
    found: list[tuple[str, DiskPath, AnyStat]] = []
    for src in srcs:
        for rel, path, st in resolve_parents(tree, src, excludes):
            target = f"{base}/{rel}" if base else rel
            items[target] = CopyItem(target, path, st, keep_owner=tree.keep_owners)
            found.append((f"{src}:{rel}", path, st))
    for (key, path, st), digest in zip(found, tree.hash_files([(p, st) for _, p, st in found])):
        hashes[key] = digest + tree.owner_key(path, st)
    if base:
        items.setdefault(base, CopyItem(base, None, None))
    return [items[k] for k in sorted(items, key=path_sort_key)], hashes


def _upper_dir(env: StepEnv) -> Path:
    """A fresh upper dir for a step's changes. Its own mode is the root's in a flattened
    copy of the layers (the last layer's root wins there), so it is 0755 like a RUN
    step's upper dir, not a private scratch dir's 0700."""
    upper = env.scratch("upper-")
    os.chmod(upper, 0o755)
    return upper


async def copy_instruction(env: StepEnv, state: ImageState, ins: Copy | Add,
                           name: str) -> None:
    """Execute (or reuse from the cache) one COPY or ADD."""
    where = env.where(ins)
    add = isinstance(ins, Add)
    # ADD unpacks a local archive unless --unpack=false, a download only with --unpack
    unpack_local = isinstance(ins, Add) and ins.unpack is not False
    if isinstance(ins, Add) and ins.checksum:
        check_checksum_sources(ins, where)
    dest_raw = ins.dest
    link = ins.link and not ins.chmod
    abs_dest = resolve_workdir(state, dest_raw)

    def compute(stage_lowers: list[Path]) -> dict[str, Any]:
        lowers = [] if link else stage_lowers  # a linked layer never sees the stage's files
        dest = _destination(lowers, abs_dest)
        _no_file_in_the_way(lowers, dest, dest_raw.endswith("/"), where)
        st = lower_stat(lowers, dest.lstrip("/"))
        try:
            owner = chown_ids(ins.chown, stage_lowers) if ins.chown else None
        except ValueError as exc:
            raise BuildError(where, f"--chown={ins.chown}: {exc}") from None
        return {"dest": dest, "dir": st is not None and stat.S_ISDIR(st.st_mode),
                "file": st is not None and not stat.S_ISDIR(st.st_mode),
                "owner": list(owner) if owner else None}

    facts = await lower_facts(env, state, {"ins": instruction_text(ins), "dest": abs_dest,
                                           "link": link, "kinds": 2}, compute, valid_facts)
    dest = facts["dest"]
    from_ref = ins.from_ if isinstance(ins, Copy) else ""
    named = env.contexts.find(from_ref) if from_ref and env.contexts else None

    async def source_tree() -> SourceTree:
        if env.contexts and named is not None and named.directory is not None:
            return env.contexts.tree(named, env.context.hash_store)  # --build-context DIR
        if from_ref:
            assert env.stage_root is not None
            return SourceTree(await env.stage_root(from_ref, _paths_to_flatten(local, parents)),
                              strict=False, what=f"stage or image {from_ref!r}",
                              keep_owners=True)
        return env.context

    n_sources = len(ins.sources) + len(ins.files)
    parents = isinstance(ins, Copy) and ins.parents
    dest_is_dir = dest_raw.endswith("/") or dest == "/" or parents
    dest_is_dir = dest_is_dir or facts["dir"]
    if n_sources > 1 and not dest_is_dir:
        raise BuildError(where, f"copying {n_sources} sources needs a destination ending "
                         f"with '/' (got {dest_raw!r})")
    items: list[CopyItem] = []
    hashes: dict[str, str] = {}
    for f in ins.files:
        target = f"{dest.rstrip('/')}/{f.name}" if dest_is_dir else dest
        items.append(CopyItem(target.lstrip("/"), None, None, data=f.data.encode()))
        hashes[f"<<{f.name}"] = blake3.blake3(f.data.encode()).hexdigest()[:32]
    local = []
    excludes = IgnoreMatcher.from_lines(list(ins.exclude))
    for s in ins.sources:
        if isinstance(ins, Add) and is_git_url(s):
            # the repository's files, as a directory's are copied: into dest
            fetched = await fetch_git(env, s, bool(ins.keep_git_dir), where)
            tree = SourceTree(fetched.path, strict=False, what=f"repository {s}")
            found_items, found = await asyncio.to_thread(
                _plan, tree, ["."], dest.lstrip("/"), True, False, excludes)
            items.extend(found_items)
            # a kept .git differs on every fetch (its index records when): the commit
            # stands for it in the key
            hashes.update({f"{s}:{rel}": digest for rel, digest in found.items()
                           if rel.strip("/").removeprefix("./").split("/")[0] != ".git"})
            hashes[f"{s}@"] = fetched.commit
        elif add and s.startswith(("http://", "https://")):
            path = await download(env, s, where)
            fname = posixpath.basename(str(path))
            if isinstance(ins, Add) and ins.checksum:
                got = "sha256:" + await asyncio.to_thread(sha256_file, path)
                if got != ins.checksum:
                    raise BuildError(where, f"{s}: --checksum={ins.checksum} but the download "
                                     f"is {got}")
            hashes[s] = await asyncio.to_thread(hash_path, path, os.stat(path))
            target = f"{dest.rstrip('/')}/{fname}" if dest_is_dir else dest
            if isinstance(ins, Add) and ins.unpack and is_archive(path):
                items.append(CopyItem(dest.strip("/"), path, os.stat(path), archive=True))
            else:
                items.append(CopyItem(target.lstrip("/"), path, os.stat(path)))
        else:
            local.append(s)

    async def plan_local() -> tuple[list[CopyItem], dict[str, str]]:
        if not local:
            return [], {}
        tree = await source_tree()
        try:
            if parents:
                return await asyncio.to_thread(_plan_parents, tree, local, dest.lstrip("/"),
                                               excludes)
            return await asyncio.to_thread(_plan, tree, local, dest.lstrip("/"),
                                           dest_is_dir, unpack_local, excludes)
        except ContextError as exc:
            raise BuildError(where, str(exc)) from exc
        except PermissionError as exc:
            raise BuildError(where, str(unreadable(tree, exc))) from exc

    # Files from another stage of this build: their hashes are facts of that stage's key,
    # so a step that hits needs none of its layers (extracted, or fetched from a cache).
    source_key = await env.stage_key(from_ref) \
        if local and from_ref and named is None and env.stage_key else None
    local_items: list[CopyItem] | None = None
    if source_key is not None:
        async def files() -> dict[str, Any]:
            nonlocal local_items
            local_items, found = await plan_local()
            return {"files": found}

        copied = await cached_facts(env, state, {"ins": instruction_text(ins),
                                                 "from": source_key, "dest": dest,
                                                 "dir": dest_is_dir}, files, valid_files)
        hashes.update(copied["files"])
    else:
        local_items, found = await plan_local()
        hashes.update(found)
    owner = (facts["owner"][0], facts["owner"][1]) if facts["owner"] else None
    check_mapped(owner, where, f"--chown={ins.chown}")
    try:
        chmod = parse_chmod(ins.chmod) if ins.chmod else None
    except ValueError as exc:
        raise BuildError(where, f"--chmod={ins.chmod}: {exc}; use an octal mode like 0644 or "
                         "a symbolic one like u+x or u=rwX,go=rX") from None
    inputs: dict[str, Any] = {"files": hashes, "dest": dest, "chown": list(owner or ()),
                              "chmod": (int(ins.chmod, 8) if ins.chmod[:1].isdigit()
                                        else ins.chmod) if chmod else None}
    if isinstance(ins, Add) and owner:
        inputs["unpack_owner"] = True  # --chown owns unpacked entries (it did not before)
    if any(it.archive for it in [*items, *(local_items or ())]):
        # hard links unpacked as Docker's untar makes them (the stage's files joined, the
        # link entry's metadata set): not the layers earlier releases cached
        inputs["untar"] = 2
    flags = []  # as BuildKit's history: no --from, --link or --exclude
    if parents:
        flags.append("--parents")
    if ins.chown:
        flags.append(f"--chown={ins.chown}")
    if ins.chmod:
        flags.append(f"--chmod={ins.chmod}")
    words = [*flags, *ins.sources, *(f"<<{f.name}" for f in ins.files), ins.dest]
    created_by = f"{ins.keyword} {' '.join(words)} # buildkit"

    async def produce(n: int) -> Path:
        nonlocal local_items
        upper = _upper_dir(env)
        todo = [*items, *(local_items if local_items is not None else (await plan_local())[0])]
        local_items = None  # one list per file of the context: gone before the layer is made
        if facts.get("file"):
            _no_directory_onto_a_file(todo, dest, where)
        lookup = await copy_up_lookup(env, state, todo) if not link else no_copy_up
        # an archive's hard links may join the stage's files (not with --link: BuildKit
        # unpacks onto an empty layer then)
        stage = stage_lowers(env, state) if not link else None
        try:
            await asyncio.to_thread(write_items, upper, todo, lookup, owner, chmod, stage)
        except LayerError as exc:
            raise BuildError(where, f"unpacking an archive: {exc}") from exc
        except ContextError as exc:
            raise BuildError(where, str(exc)) from exc
        return upper

    await layer_step(env, state, ins, name, instruction_text(ins), created_by, inputs,
                     produce, independent=link)


async def workdir_instruction(env: StepEnv, state: ImageState, ins: Workdir,
                              name: str) -> None:
    """WORKDIR: set the config's working dir and create it (a layer, as BuildKit).

    Directories it creates belong to the stage's USER, as BuildKit makes them."""
    value = workdir_value(state, ins.path)  # the config's text (BuildKit keeps /app/)
    path = clean_path(value)  # the directory to create
    state.update(working_dir=value)
    user = state.config.user

    def compute(lowers: list[Path]) -> dict[str, Any]:
        owner = workdir_owner(user, lowers) if user else None
        dest = resolve_in_lowers(lowers, path, follow_final=True)
        _no_file_in_the_way(lowers, dest, True, env.where(ins))
        return {"dest": dest, "dir": True, "owner": list(owner) if owner else None}

    facts = await lower_facts(env, state, {"ins": f"WORKDIR {path}", "user": user or ""},
                              compute, valid_facts)
    target: str = facts["dest"]
    owner = (facts["owner"][0], facts["owner"][1]) if facts["owner"] else None
    if owner is not None:
        check_mapped(owner, env.where(ins), f"USER {user}")

    async def produce(n: int) -> Path:
        upper = _upper_dir(env)
        lowers = await env.lowers(state)
        await asyncio.to_thread(make_parents, upper, target.lstrip("/"), lowers_lookup(lowers),
                                owner)
        # a directory that already existed is only copied up: no change, no layer
        if lower_stat(lowers, target.lstrip("/")) is not None:
            await asyncio.to_thread(shutil.rmtree, upper)
            upper.mkdir()
        return upper

    await layer_step(env, state, ins, name, f"WORKDIR {path}", f"WORKDIR {value}",
                     {"workdir": path, "owner": list(owner or ())}, produce)
