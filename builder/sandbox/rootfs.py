"""Compose a step's root filesystem: overlayfs where the kernel allows it, else a copy.

``RootfsMode.OVERLAY``: the lower directories (top first; extracted layers in overlayfs
format, whiteouts as 0/0 character devices and opaque directories marked with the
``trusted.overlay.opaque`` xattr, or one snapshot directory) are stacked read-only under a
fresh, empty *upper* directory. After the step the upper directory holds exactly the
step's changes, deletions as overlayfs whiteouts; the caller turns it into a layer.

``RootfsMode.COPY``: the lowers are flattened into a fresh directory (whiteouts applied)
and the step runs there; the caller diffs it against its snapshot.

The mount itself happens inside the step's private mount namespace (see ``_stage.py``);
this module decides the mode, lays out the directories and reads files from the lowers
before anything is mounted.

Layout inside the caller's ``state_dir``::

    state_dir/
        upper/      the step's changes (OVERLAY)       -- kept for the caller
        rootfs/     the flattened root (COPY)          -- kept for the caller
        work/       overlayfs work dir                 -- removed after the step
        merged/     mount point of the composed root   -- removed after the step
        run/        hosts file, rw-bind layers         -- removed after the step
        l/          short links to the lowers, for a mount of many layers -- removed after the step
        .overlay-probe/   a test mount, once per filesystem -- removed at once
"""

from __future__ import annotations

import enum
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..layers.longpath import short
from ..layers.rootwalk import SymlinkLoop, walk_in_root
from .errors import SandboxSetupError, SandboxUnavailable
from .userns import in_user_namespace, overlay_xattr
from .whiteouts import is_whiteout

__all__ = [
    "MAX_LOWERS",
    "OVERLAY_OPTIONS",
    "USERNS_OVERLAY_OPTIONS",
    "RootfsLayout",
    "RootfsMode",
    "find_in_lowers",
    "is_opaque",
    "lower_stat",
    "overlay_index_supported",
    "overlay_mount_data",
    "overlay_supported",
    "read_from_lowers",
]

# metacopy=off and redirect_dir=off keep the upper directory self-contained: without them
# a chmod copies up only metadata, and a directory rename leaves a pointer into a lower;
# neither makes sense in a layer. The step's root adds index=on where the kernel and the
# filesystem allow it: a lower file with several names (hard links) is then copied up
# once, and every name the step touches stays on that one upper inode (the index lives
# in the work dir, which is removed after the step). Other mounts use index=off.
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off"
# Inside a user namespace overlayfs keeps its xattrs in user.overlay.* (``userxattr``)
# and takes redirect_dir=nofollow (not created, not followed) instead of off.
USERNS_OVERLAY_OPTIONS = "redirect_dir=nofollow,metacopy=off,userxattr"
# The kernel takes at most one page of mount options.
_MAX_MOUNT_DATA = 4000
#: The most lower directories one overlay mount stacks (the kernel's OVL_MAX_STACK).
MAX_LOWERS = 500


class RootfsMode(enum.Enum):
    AUTO = "auto"
    OVERLAY = "overlay"
    COPY = "copy"


@dataclass(frozen=True)
class RootfsLayout:
    """Where a step's root lives; ``changes`` is what the caller keeps. ``index``: the
    overlay is mounted with ``index=on`` (hard links survive copy-up)."""

    mode: RootfsMode
    lowers: tuple[Path, ...]
    state_dir: Path
    index: bool = False

    @property
    def upper(self) -> Path:
        return self.state_dir / "upper"

    @property
    def work(self) -> Path:
        return self.state_dir / "work"

    @property
    def merged(self) -> Path:
        return self.state_dir / ("merged" if self.mode is RootfsMode.OVERLAY else "rootfs")

    @property
    def run(self) -> Path:
        return self.state_dir / "run"

    @property
    def links(self) -> Path:
        """Short names of the lowers, made when a long list needs them."""
        return self.state_dir / "l"

    @property
    def changes(self) -> Path:
        """OVERLAY: the upper dir (the step's changes). COPY: the whole resulting root."""
        return self.upper if self.mode is RootfsMode.OVERLAY else self.merged


def _escape(path: str) -> str:
    # overlayfs splits options on "," and lowerdir on ":"; both accept "\" escapes.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def overlay_mount_data(
    lowers: Sequence[Path], upper: Path, work: Path, *, index: bool = False,
    links: Path | None = None,
) -> tuple[str, str | None]:
    """The overlay mount option string, and the directory to mount from (or None).

    Long layer lists exceed the one page of mount data the kernel accepts; as containerd
    does, the paths are then made relative to their common parent, mounted from there.
    Where even that is too long (some 50 layers: each is named by its digest), the lowers
    are given short names, symbolic links in ``links`` (made here; a sibling of ``upper``
    and ``work``), as Docker's overlay2 driver names its layers in ``l/``: up to the
    kernel's :data:`MAX_LOWERS`. A directory listed twice (an image with two identical
    layers) is kept only at its topmost place.
    """
    # overlayfs refuses a lowerdir given twice ("conflicting lowerdir path", ELOOP). The
    # lower copy of a repeated layer is invisible anyway: every entry, whiteout and opaque
    # marker it holds is repeated by the copy above it, which shadows everything below.
    lowers = list(dict.fromkeys(lowers))

    def data(paths: Sequence[str], up: str, wk: str) -> str:
        low = ":".join(_escape(p) for p in paths)
        options = USERNS_OVERLAY_OPTIONS if in_user_namespace() else OVERLAY_OPTIONS
        return (f"lowerdir={low},upperdir={_escape(up)},workdir={_escape(wk)},"
                f"{options},index={'on' if index else 'off'}")

    absolute = data([str(p) for p in lowers], str(upper), str(work))
    if len(absolute) <= _MAX_MOUNT_DATA:
        return absolute, None
    base = os.path.commonpath([str(p) for p in (*lowers, upper, work)])
    relative = data(
        [os.path.relpath(p, base) for p in lowers],
        os.path.relpath(upper, base),
        os.path.relpath(work, base),
    )
    if len(relative) <= _MAX_MOUNT_DATA:
        return relative, base
    if links is None or len(lowers) > MAX_LOWERS:
        raise SandboxSetupError(
            f"{len(lowers)} layers do not fit in one overlay mount (the kernel stacks at "
            f"most {MAX_LOWERS}); squash the base image, or build with --differ snapshot"
        )
    links.mkdir(parents=True, exist_ok=True)
    for i, lower in enumerate(lowers):  # l/0 .. l/499: at most 6 bytes a layer
        if not (links / str(i)).is_symlink():
            (links / str(i)).symlink_to(lower.absolute())
    names = [f"{links.name}/{i}" for i in range(len(lowers))]
    short = data(names, os.path.relpath(upper, links.parent), os.path.relpath(work, links.parent))
    return short, str(links.parent)


# filesystem -> (overlay mounts, overlay mounts with index=on)
_probe_cache: dict[tuple[int, tuple[str, ...]], tuple[bool, bool]] = {}
_probe_lock = threading.Lock()


def _filesystem_key(path: Path) -> tuple[int, tuple[str, ...]]:
    # Device numbers of tmpfs, overlayfs, ... are reused after an unmount; the mount ids
    # in mountinfo are not (soon), so together they name one filesystem instance.
    dev = path.stat().st_dev
    majmin = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            ids = tuple(line.split()[0] for line in f if line.split()[2] == majmin)
    except OSError:
        ids = ()
    return dev, ids


def overlay_supported(state_dir: Path) -> bool:
    """Can an overlay with its upper dir on ``state_dir``'s filesystem be mounted?

    Tried for real (in a throw-away mount namespace), once per filesystem.
    """
    return _probe(state_dir)[0]


def overlay_index_supported(state_dir: Path) -> bool:
    """Can that overlay be mounted with ``index=on`` (tried with the same probe)?"""
    return _probe(state_dir)[1]


def _probe(state_dir: Path) -> tuple[bool, bool]:
    key = _filesystem_key(state_dir)
    if key in _probe_cache:
        return _probe_cache[key]
    with _probe_lock:  # a build probes ahead of its first RUN, in another thread
        if key not in _probe_cache:
            _probe_cache[key] = _mount_probe(state_dir)
        return _probe_cache[key]


def _mount_probe(state_dir: Path) -> tuple[bool, bool]:
    probe = state_dir / ".overlay-probe"
    dirs = [probe / d for d in ("lower", "upper", "work", "merged")]
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    results = []
    # The mount table says whether index=on took: overlayfs falls back to index=off
    # with only a kernel log line where it cannot use file handles (always, inside a
    # user namespace).
    script = 'mount -t overlay overlay -o "$1" "$2" && cat /proc/self/mountinfo'
    try:
        for index in (True, False):
            shutil.rmtree(probe, ignore_errors=True)
            for d in dirs:
                d.mkdir(parents=True, exist_ok=True)
            opts, _ = overlay_mount_data([dirs[0]], dirs[1], dirs[2], index=index)
            done = subprocess.run(
                [unshare, "--mount", "--propagation", "private",
                 "/bin/sh", "-c", script, "sh", opts, str(dirs[3])],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            mounted = done.returncode == 0
            results.append(mounted and (not index or _index_took(done.stdout, dirs[3])))
            if mounted:
                break
    except FileNotFoundError as exc:
        raise SandboxUnavailable(
            f"{exc.filename} not found: install util-linux (unshare, mount)"
        ) from exc
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return mounted, results[0]


def _index_took(mountinfo: bytes, merged: Path) -> bool:
    """Does the overlay mounted at ``merged`` (per ``mountinfo``) use ``index=on``?"""
    where = os.fsencode(merged)
    for c in b"\\ \t\n":  # mountinfo escapes these as octal
        where = where.replace(bytes([c]), b"\\%03o" % c)
    for line in mountinfo.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and fields[4] == where:
            options = line.rpartition(b" ")[2].split(b",")
            if b"index=on" in options or b"index=off" in options:
                return b"index=on" in options
            break
    try:  # not shown: the kernel's default
        return Path("/sys/module/overlay/parameters/index").read_text().strip() == "Y"
    except OSError:
        return True


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, overlay_xattr("opaque"), follow_symlinks=False) == b"y"
    except OSError:
        return False


def read_from_lowers(lowers: Sequence[Path], rel: str) -> bytes | None:
    """The bytes overlayfs would show at ``rel`` (relative), or None when that is no
    regular file.

    Honours whiteouts and opaque directories of the layers above; symlinks on the way,
    the last one too, are followed inside the image (an ``/etc/passwd`` that links to
    ``/var/lib/extrausers/passwd``), as runc and BuildKit read the file in the container's
    root. Used to read /etc/passwd and /etc/group before the root is mounted.
    """
    def readlink(components: list[str]) -> str:
        found = find_in_lowers(lowers, "/".join(components))
        assert found is not None  # walk_in_root asks only about symlinks lstat found
        return os.readlink(found[1])

    try:
        parts = walk_in_root(rel.split("/"), follow_final=True, readlink=readlink,
                             lstat=lambda c: lower_stat(lowers, "/".join(c)))
    except SymlinkLoop:
        return None
    found = find_in_lowers(lowers, "/".join(parts))
    if found is None or not stat.S_ISREG(found[2].st_mode):
        return None
    return found[1].read_bytes()


def lower_stat(lowers: Sequence[Path], rel: str) -> os.stat_result | None:
    """What overlayfs would show at ``rel`` from the lowers alone (lstat), or None."""
    found = find_in_lowers(lowers, rel)
    return None if found is None else found[2]


def find_in_lowers(
    lowers: Sequence[Path], rel: str
) -> tuple[Path, Path, os.stat_result] | None:
    """``(lower, path, lstat)`` of what overlayfs would show at ``rel`` from the lowers
    alone: the lower directory it comes from, its path there and its lstat; or None.
    The path may be longer than the kernel takes (an image's deep path below a long
    storage directory): name it through :func:`..layers.longpath.short`."""
    parts = [p for p in rel.strip("/").split("/") if p]
    for lower in lowers:
        cur = lower
        hidden_below = False
        for i, part in enumerate(parts):
            cur = cur / part
            last = i == len(parts) - 1
            try:
                with short(cur) as at:
                    st = os.lstat(at)
                    whiteout = is_whiteout(at, st)
                    opaque = not last and stat.S_ISDIR(st.st_mode) and is_opaque(Path(at))
            except FileNotFoundError:
                break
            except NotADirectoryError:
                return None  # a file in this layer shadows the directory below
            if whiteout:
                return None
            if last:
                return lower, cur, st
            if not stat.S_ISDIR(st.st_mode):
                return None
            if opaque:
                hidden_below = True
        if hidden_below:
            return None
    return None
