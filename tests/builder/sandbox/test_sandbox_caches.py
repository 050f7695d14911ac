"""Cache mount directories: instances, ownership and the three sharing modes."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from builder.sandbox import CacheMount, Sharing
from builder.sandbox.caches import lease_caches
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
