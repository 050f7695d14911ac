"""Cache mount directories: instances, ownership, what they start from (and so which
cache a mount is) and the three sharing modes."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from builder.dockerfile.mounts import Mount as MountFlag
from builder.dockerfile.mounts import parse_mount
from builder.sandbox import CacheMount, Sharing
from builder.sandbox.caches import lease_caches
from builder.sandbox.spec import sandbox_mount
from tests.helpers.sandbox_steps import require_root


def _in_thread(cache_dir: Path, mount: CacheMount) -> tuple[threading.Thread, list[Path]]:
    got: list[Path] = []

    def lease() -> None:
        with lease_caches(cache_dir, [mount]) as paths:
            got.extend(paths)

    thread = threading.Thread(target=lease)
    thread.start()
    return thread, got


def test_locked_waits_for_the_holder(tmp_path: Path) -> None:
    mount = CacheMount("/c", id="x", sharing=Sharing.LOCKED)
    with lease_caches(tmp_path, [mount]) as held:
        thread, got = _in_thread(tmp_path, mount)
        time.sleep(0.3)
        assert got == []  # still waiting
    thread.join(5)
    assert got == held


@pytest.mark.parametrize("sharing", [Sharing.SHARED, Sharing.PRIVATE])
def test_shared_and_private_do_not_wait(tmp_path: Path, sharing: Sharing) -> None:
    mount = CacheMount("/c", id="x", sharing=sharing)
    with lease_caches(tmp_path, [mount]) as held:
        thread, got = _in_thread(tmp_path, mount)
        thread.join(5)
        assert not thread.is_alive()
        if sharing is Sharing.SHARED:
            assert got == held
        else:
            assert got != held and got[0].parent == held[0].parent


def test_new_instance_gets_uid_gid_mode_once(tmp_path: Path) -> None:
    require_root()  # chown
    mount = CacheMount("/c", id="own", uid=1000, gid=50, mode=0o710)
    with lease_caches(tmp_path, [mount]) as (path,):
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 50, 0o710)
    os.chmod(path, 0o755)
    with lease_caches(tmp_path, [mount]) as (again,):
        assert again == path and stat.S_IMODE(again.stat().st_mode) == 0o755
    assert (path.parent / "id").read_text() == "own\n"


def test_id_defaults_to_target(tmp_path: Path) -> None:
    with lease_caches(tmp_path, [CacheMount("/root/.cache")]) as (a,):
        pass
    with lease_caches(tmp_path, [CacheMount("/other", id="/root/.cache")]) as (b,):
        pass
    assert a == b


def _flag(spec: str) -> MountFlag:
    flag = parse_mount(spec)
    assert flag is not None
    return flag


def test_same_id_with_another_start_is_another_cache(tmp_path: Path) -> None:
    """As BuildKit: uid/gid/mode (when given) and from= are part of a cache's identity."""
    plain = sandbox_mount(_flag("type=cache,id=k,target=/c"))
    owned = sandbox_mount(_flag("type=cache,id=k,target=/c,uid=1000,mode=0700"))
    same_owned = sandbox_mount(_flag("type=cache,id=k,target=/d,mode=700,uid=1000,gid=0"))
    root_given = sandbox_mount(_flag("type=cache,id=k,target=/c,uid=0"))
    assert isinstance(plain, CacheMount) and isinstance(owned, CacheMount)
    assert isinstance(same_owned, CacheMount) and isinstance(root_given, CacheMount)
    assert plain.cache_id == "k"
    assert owned.cache_id == same_owned.cache_id == "k (uid=1000,gid=0,mode=0700)"
    assert len({plain.cache_id, owned.cache_id, root_given.cache_id}) == 3
    with lease_caches(tmp_path, [plain, owned]) as (a, b):
        assert a != b
    seeded = sandbox_mount(_flag("type=cache,id=k,target=/c,from=deps,source=/out"))
    assert isinstance(seeded, CacheMount)
    assert (seeded.from_ref, seeded.source, seeded.base) == ("deps", "/out", "")


def test_seeded_instance_copies_the_source_once(tmp_path: Path) -> None:
    require_root()  # chown, mknod
    seed = tmp_path / "seed"
    (seed / "sub").mkdir(parents=True)
    (seed / "tool").write_text("t")
    os.chown(seed / "tool", 1000, 50)
    os.chmod(seed / "tool", 0o4750)
    os.link(seed / "tool", seed / "sub" / "tool.hard")
    os.symlink("../tool", seed / "sub" / "link")
    os.mkfifo(seed / "fifo")
    os.chown(seed / "sub", 12, 34)
    os.chmod(seed / "sub", 0o700)
    os.chmod(seed, 0o750)
    mount = CacheMount("/c", id="s", base="from=deps,source=/ 0123", seed=seed)
    with lease_caches(tmp_path / "caches", [mount]) as (path,):
        got = {str(p.relative_to(path)): p.lstat() for p in path.rglob("*")}
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o750, 0)
        assert sorted(got) == ["fifo", "sub", "sub/link", "sub/tool.hard", "tool"]
        tool = got["tool"]
        assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o4750, 1000, 50)
        assert tool.st_ino == got["sub/tool.hard"].st_ino and tool.st_nlink == 2
        assert (stat.S_IMODE(got["sub"].st_mode), got["sub"].st_uid) == (0o700, 12)
        assert os.readlink(path / "sub" / "link") == "../tool"
        assert stat.S_ISFIFO(got["fifo"].st_mode)
        (path / "tool").write_text("changed")
    (seed / "new").write_text("n")
    with lease_caches(tmp_path / "caches", [mount]) as (again,):
        assert again == path and (again / "tool").read_text() == "changed"
        assert not (again / "new").exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_seed_whose_device_nodes_cannot_be_made_is_copied_without_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a user namespace (a non-root build) mknod of a device is refused: the cache
    starts as the seed without its device nodes, as an extracted layer does, not with a
    bare EPERM. A FIFO is still made."""
    require_root()  # mknod of the seed's device
    seed = tmp_path / "seed"
    seed.mkdir()
    os.mknod(seed / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(seed / "fifo")
    (seed / "f").write_text("f")
    real = os.mknod

    def refused(path: str, mode: int = 0o600, device: int = 0) -> None:
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise PermissionError(1, "Operation not permitted", path)
        real(path, mode, device)

    monkeypatch.setattr(os, "mknod", refused)
    mount = CacheMount("/c", id="d", base="from=deps,source=/ 0456", seed=seed)
    with lease_caches(tmp_path / "caches", [mount]) as (path,):
        assert sorted(p.name for p in path.iterdir()) == ["f", "fifo"]
        assert stat.S_ISFIFO((path / "fifo").lstat().st_mode)


def _waited_on(path: Path) -> bool:
    """Whether a flock on ``path`` has a waiter (``/proc/locks``: ``-> FLOCK ...``)."""
    st = path.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as f:
        return any(" -> FLOCK " in line and f" {inode} " in line for line in f)


def test_caches_are_taken_in_one_order_whatever_the_mounts_order(tmp_path: Path) -> None:
    # Two builds whose steps mount the same two locked caches in different orders must
    # not each take one and wait for the other's for ever. While a lease waits for
    # cache "a", it holds no cache that comes after it ("b"), whatever its mounts' order.
    a = CacheMount("/a", id="a", sharing=Sharing.LOCKED)
    b = CacheMount("/b", id="b", sharing=Sharing.LOCKED)
    got: list[Path] = []
    with lease_caches(tmp_path, [a]) as (held_a,):
        def lease() -> None:
            with lease_caches(tmp_path, [b, a]) as paths:
                got.extend(paths)

        waiting = threading.Thread(target=lease)
        waiting.start()
        lock_a = held_a.parent / "0.lock"
        deadline = time.monotonic() + 10
        while not _waited_on(lock_a):
            assert time.monotonic() < deadline, "the lease never waited for cache a"
            time.sleep(0.01)
        other, other_got = _in_thread(tmp_path, b)
        other.join(5)
        assert not other.is_alive(), "cache b is held by a lease that waits for cache a"
        assert other_got and other_got[0].parent.name != held_a.parent.name
    waiting.join(5)
    assert [p.parent for p in got] == [other_got[0].parent, held_a.parent]
