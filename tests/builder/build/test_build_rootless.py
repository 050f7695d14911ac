"""Unprivileged builds: ``pybuild build`` run by a non-root user (docs/rootless.md).

The build suite's core cases are built twice with the same ``--source-date-epoch``: as
root, and as a throw-away user with a subordinate id range (``testkit.users``), whose build
enters a user namespace. The image digests must be equal: every layer records the same
owners, modes, whiteouts, opaque directories and hard links. The cases cover COPY
(``--chown``, ``--chmod``, hard links), RUN under both executors (bwrap as root, chroot for
a non-root USER), whiteouts and opaque directories, chown to image ids, multi-stage
``COPY --from``, and hard links changed across steps (the copy differ, as the user
namespace has no overlay ``index=on``).

Missing prerequisites fail with one line that names the fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.sandbox.userns import (
    IdRange,
    UserNamespaceUnavailable,
    check_user_namespaces,
    free_subordinate_range,
    id_map,
    subordinate_ranges,
)
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import require_root, require_tool
from testkit.users import SystemUser, python_for, shared_workspace, temporary_user
from tests.builder.build.conftest import TESTFILES, write_base_layout
from tests.helpers.at_once import both_at_once

# The builder tests' cases, and the e2e comparison's many-layers (92 layers in one RUN),
# cache-mount-starts (a cache that starts as a copy of a stage's directory: owners, a
# setuid bit) and copy-from-xattrs (file capabilities, which a user namespace stores in
# its own form, copied into other stages).
CASES = ["basic", "differ", "docker-parity", "hardlinks", "multistage", "many-layers",
         "cache-mount-starts", "copy-from-xattrs"]
E2E_CASES = Path(__file__).resolve().parents[2] / "e2e" / "testfiles" / "build-compare"
EPOCH = "1700000000"


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A directory both root and the test user can read (pytest's tmp dirs are 0700)."""
    require_root("the rootless tests create a user")
    with shared_workspace("pybuild-rootless-") as ws:
        yield ws


@pytest.fixture(scope="module")
def user() -> Iterator[SystemUser]:
    for tool in ("newuidmap", "newgidmap", "bwrap"):
        require_tool(tool)
    with temporary_user("pybuild-rl") as u:
        yield u


@pytest.fixture(scope="module")
def contexts(workspace: Path) -> dict[str, Path]:
    base = workspace / "base"
    ref = write_base_layout(make_busybox_rootfs(base / "rootfs"), base / "layout")
    out = {}
    for case in CASES:
        ctx = workspace / "cases" / case
        shutil.copytree(TESTFILES / case if (TESTFILES / case).is_dir() else E2E_CASES / case,
                        ctx, symlinks=True)
        dockerfile = ctx / "Dockerfile"  # the e2e cases' form (ARG BASE, FROM ${BASE}) too
        dockerfile.write_text(dockerfile.read_text().replace("ARG BASE\n", "")
                              .replace("${BASE}", "BASE").replace("BASE", ref))
        out[case] = ctx
    os.link(out["docker-parity"] / "pair/one.txt", out["docker-parity"] / "pair/one.hard")
    subprocess.run(["chmod", "-R", "a+rX", str(workspace)], check=True)
    return out


def _case_on_the_base(workspace: Path, contexts: dict[str, Path], name: str) -> Path:
    """A copy of testfile ``name`` whose Dockerfile is FROM the base the ``basic`` case uses."""
    ctx = workspace / "cases" / name
    shutil.copytree(TESTFILES / name, ctx)
    base_ref = contexts["basic"].joinpath("Dockerfile").read_text().split()[1]
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace("BASE", base_ref))
    return ctx


def _pybuild(user: SystemUser, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    python, base_env = python_for(user)
    return user.run(*python, "-m", "builder", *args, env={**base_env, **env})


def _both_ways(user: SystemUser, ctx: Path, root_storage: Path, data: Path,
               args: tuple[str, ...] = ()) -> tuple[str, subprocess.CompletedProcess[str]]:
    """The image digest of a root build of ``ctx``, and the user's build of it (whose
    storage is the XDG data dir's ``data``: no --storage; ``args`` its further options),
    at the same epoch. The two builds share nothing but the context: they run at once."""

    def as_root() -> str:
        root = subprocess.run(
            [sys.executable, "-m", "builder", "build", "--progress", "quiet",
             "--source-date-epoch", EPOCH, "--storage", str(root_storage), str(ctx)],
            capture_output=True, text=True, check=False)
        assert root.returncode == 0, root.stderr
        return root.stdout.strip()

    def as_user() -> subprocess.CompletedProcess[str]:
        return _pybuild(user, ["build", "--progress", "plain", "--source-date-epoch", EPOCH,
                               *args, str(ctx)], XDG_DATA_HOME=str(data))

    return both_at_once(as_root, as_user)


@pytest.mark.slow
def test_non_root_builds_give_the_root_builds_digests(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    data = workspace / "user-data"
    data.mkdir()
    os.chown(data, user.uid, user.gid)
    for case, ctx in contexts.items():
        root, rootless = _both_ways(user, ctx, workspace / "root-storage", data)
        assert rootless.returncode == 0, f"{case}:\n{rootless.stderr}"
        assert rootless.stdout.strip() == root, case
    # Inside the namespace the image's ids are real ids: the differ case chowns a file
    # to 1000:1000, which on the host is the 1000th id of the user's range.
    snapshots = data / "pybuild" / "builder" / "snapshots"
    assert user.subid_start is not None
    owners = {(st.st_uid, st.st_gid) for st in map(os.lstat, snapshots.rglob("keep.txt"))}
    assert (user.subid_start + 999, user.subid_start + 999) in owners
    # The namespace's other ids are removable by the user only through pybuild.
    pruned = _pybuild(user, ["builder", "prune", "--all"], XDG_DATA_HOME=str(data))
    assert pruned.returncode == 0, pruned.stderr
    assert not any(snapshots.iterdir())


def test_a_user_without_a_subordinate_range_is_told_how_to_add_one(
        workspace: Path, contexts: dict[str, Path]) -> None:
    require_tool("newuidmap")
    with temporary_user("pybuild-nosub", subids=False) as u:
        done = _pybuild(u, ["build", "--progress", "plain", str(contexts["basic"])])
        free = free_subordinate_range()  # the range no other user holds
    span = f"{free.start}-{free.start + 65535}"
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"ERROR: user {u.name} (uid {u.uid}) has no subordinate uid range in /etc/subuid, "
        "which a non-root build needs to give image files their owners; add one as root: "
        f"usermod --add-subuids {span} --add-subgids {span} {u.name}"]


def test_missing_newuidmap_is_named_with_its_package(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    empty = workspace / "empty-path"
    empty.mkdir(exist_ok=True)
    done = _pybuild(user, ["build", str(contexts["basic"])], PATH=str(empty))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: newuidmap not found"), done.stderr
    assert "apt-get install uidmap" in lines[0]


def test_ids_beyond_the_subordinate_range_fail_naming_the_fix(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    ctx = _case_on_the_base(workspace, contexts, "rootless-unmapped")
    # A base layer with a file of such an owner.
    rootfs = workspace / "unmapped-base" / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "far").write_text("far away\n")
    os.chown(rootfs / "etc" / "far", 70000, 70000)
    far_ref = write_base_layout(rootfs, workspace / "unmapped-base" / "layout", owner=None)
    base_ctx = workspace / "cases" / "rootless-unmapped-base"
    shutil.copytree(TESTFILES / "rootless-unmapped-base", base_ctx)
    (base_ctx / "Dockerfile").write_text(
        (base_ctx / "Dockerfile").read_text().replace("BASE", far_ref))
    subprocess.run(["chmod", "-R", "a+rX", str(workspace)], check=True)

    fix = "give the user a subordinate range that covers it (usermod --add-subuids"
    done = _pybuild(user, ["build", "--progress", "quiet", str(ctx)])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "ERROR: Dockerfile:3: COPY: --chown=70000:70000: uid 70000 is not mapped in this "
        f"non-root build's user namespace (it has uids 0-65536); {fix}, --add-subgids) or "
        "build as root"]
    done = _pybuild(user, ["build", "--progress", "quiet", str(base_ctx)])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ERROR: layer entry 'etc/far' is owned by 70000:70000, an id "
                               "this user namespace does not map"), lines[0]


def test_a_base_layers_device_nodes_left_out_are_named(
        workspace: Path, user: SystemUser) -> None:
    # The RUN step does not see /k/null (as under rootless BuildKit): not silently.
    rootfs = make_busybox_rootfs(workspace / "device-base" / "rootfs")
    (rootfs / "k").mkdir()
    os.mknod(rootfs / "k" / "null", 0o20666, os.makedev(1, 3))
    ref = write_base_layout(rootfs, workspace / "device-base" / "layout", owner=None)
    ctx = workspace / "cases" / "rootless-device-base"
    shutil.copytree(TESTFILES / "rootless-device-base", ctx)
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace("BASE", ref))
    subprocess.run(["chmod", "-R", "a+rX", str(workspace)], check=True)
    data = workspace / "device-user-data"
    data.mkdir()
    os.chown(data, user.uid, user.gid)
    done = _pybuild(user, ["build", "--progress", "plain", str(ctx)], XDG_DATA_HOME=str(data))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("WARNING: layer sha256:"), warnings[0]
    assert warnings[0].endswith(
        " has device nodes (k/null) that a non-root build cannot create (a user namespace "
        "may not make them): its RUN steps, and RUN mounts from it, do not see them, while "
        "COPY --from and the image keep them; build as root if a step needs them "
        "(docs/rootless.md)")
    _pybuild(user, ["builder", "prune", "--all"], XDG_DATA_HOME=str(data))


def test_mknod_in_a_run_step_fails_saying_why(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    ctx = _case_on_the_base(workspace, contexts, "rootless-mknod")
    subprocess.run(["chmod", "-R", "a+rX", str(ctx)], check=True)
    done = _pybuild(user, ["build", "--progress", "quiet", str(ctx)])
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ERROR: Dockerfile:4: RUN: '/bin/sh -c mkfifo /fifo && mknod /null c 1 3' did not "
        "complete successfully: exit code 1",
        "mknod: /null: Operation not permitted",
        "a non-root build runs in a user namespace, where device nodes cannot be created (as "
        "under rootless BuildKit): build as root, or leave the device to the container "
        "runtime, which provides /dev (docs/rootless.md)"]


@contextlib.contextmanager
def _overlay_mount(where: Path) -> Iterator[Path]:
    """A fresh overlayfs at ``where/merged`` (as a container's root filesystem is)."""
    for part in ("lower", "upper", "work", "merged"):
        (where / part).mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={where}/lower,upperdir={where}/upper,workdir={where}/work",
                    str(where / "merged")], check=True)
    try:
        yield where / "merged"
    finally:
        subprocess.run(["umount", str(where / "merged")], check=True)


def test_storage_on_an_overlayfs_gives_the_root_builds_digest(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    # Where the user's overlay mounts fail, --differ auto runs each RUN on the snapshot
    # differ; on an overlayfs its upper dir cannot hold a deletion's whiteout as a 0/0
    # character device (overlayfs refuses those on itself, for root too), so it takes the
    # xattr form, which the layers, later steps and COPY read as the same deletion.
    ctx = _case_on_the_base(workspace, contexts, "rootless-overlay-storage")
    subprocess.run(["chmod", "-R", "a+rX", str(ctx)], check=True)
    with _overlay_mount(workspace / "overlay-storage") as merged:
        os.chmod(merged, 0o755)
        (merged / "data").mkdir()
        os.chown(merged / "data", user.uid, user.gid)
        root, rootless = _both_ways(user, ctx, workspace / "root-storage", merged / "data")
        assert rootless.returncode == 0, rootless.stderr
        assert rootless.stdout.strip() == root
        # the differ's whiteouts, adopted as the step's extracted layer
        snapshots = merged / "data" / "pybuild" / "builder" / "snapshots"
        assert [p for p in snapshots.glob("*/d/gone") if p.stat().st_size == 0]
        _pybuild(user, ["builder", "prune", "--all"], XDG_DATA_HOME=str(merged / "data"))


def _user_dir(user: SystemUser, path: Path) -> Path:
    """A new directory ``path`` (its parents made by root, 0755) that belongs to the user."""
    path.mkdir(parents=True)
    os.chown(path, user.uid, user.gid)
    return path


def _owners(root: Path) -> set[int]:
    """The uids of every entry under ``root``, named relative to each directory (an
    image's deep path below a long one passes PATH_MAX)."""
    uids = {os.lstat(root).st_uid}
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(root):
        uids.update(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid
                    for name in dirnames + filenames)
    return uids


def test_deep_paths_below_a_long_storage_and_destination_as_a_non_root_user(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    # The image's ~3,800-byte path below the user's long storage directory and below a
    # long local destination: the step, the local output (handed to the user: it said
    # "file name too long") and the image are the root build's, and the user can remove
    # both the output and, through prune, the extracted layers owned by image ids.
    ctx = _case_on_the_base(workspace, contexts, "rootless-deep-paths")
    subprocess.run(["chmod", "-R", "a+rX", str(ctx)], check=True)
    long = workspace / "long-paths" / ("s" * 200) / ("t" * 200)
    data, out = _user_dir(user, long / "data"), _user_dir(user, long / "out")
    root, rootless = _both_ways(user, ctx, long / "root-storage", data,
                                ("-o", f"type=local,dest={out / 'local'}"))
    assert rootless.returncode == 0, rootless.stderr
    assert rootless.stdout.strip() == root
    local = out / "local"
    assert (local / "seen").read_text() == "deep\n"
    assert (local / "hl").read_text() == "deep\nmore\n"  # one file with the deep name
    assert _owners(local) == {user.uid}
    assert user.run("rm", "-rf", str(local), env={"PATH": "/usr/bin:/bin"}).returncode == 0
    assert not local.exists()
    snapshots = data / "pybuild" / "builder" / "snapshots"
    assert user.subid_start is not None and user.subid_start + 2345 - 1 in _owners(snapshots)
    pruned = _pybuild(user, ["builder", "prune", "--all"], XDG_DATA_HOME=str(data))
    assert pruned.returncode == 0, pruned.stderr
    assert not any(snapshots.iterdir())


def test_a_base_linking_to_a_lower_file_and_the_automatic_gc_as_a_non_root_user(
        workspace: Path, user: SystemUser, contexts: dict[str, Path]) -> None:
    # A layer that another tool wrote, hard-linking to a file of the layer below owned by
    # an image id: the user's build copies it up (a chain-<ID> extracted layer, owned by
    # the namespace's ids on the host) and gives the root build's image; the next build's
    # collection, with a tiny bound, removes that copy, which the user could not.
    from tests.builder.build.test_build_hardlinks import _add_layer, _entry

    rootfs = make_busybox_rootfs(workspace / "linked-base" / "rootfs")
    (rootfs / "data").mkdir()
    (rootfs / "data" / "owned").write_text("from the lower layer\n")
    os.chown(rootfs / "data" / "owned", 1234, 1234)
    layout = workspace / "linked-base" / "layout"
    ref = write_base_layout(rootfs, layout, owner=None)
    _add_layer(layout, [_entry("opt", tarfile.DIRTYPE),
                        _entry("opt/linked", tarfile.LNKTYPE, "data/owned")])
    ctx = workspace / "cases" / "rootless-linked-base"
    shutil.copytree(TESTFILES / "rootless-linked-base", ctx)
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace("BASE", ref))
    subprocess.run(["chmod", "-R", "a+rX", str(workspace / "linked-base"), str(ctx)],
                   check=True)
    data = _user_dir(user, workspace / "linked-user-data")
    out = _user_dir(user, workspace / "linked-out")
    root, rootless = _both_ways(user, ctx, workspace / "linked-root-storage", data,
                                ("-o", f"type=local,dest={out / 'local'}"))
    assert rootless.returncode == 0, rootless.stderr
    assert rootless.stdout.strip() == root
    assert (out / "local" / "seen").read_text() == "from the lower layer\n"
    assert (out / "local" / "links").read_text() == "2 2345\n"
    snapshots = data / "pybuild" / "builder" / "snapshots"
    chained = list(snapshots.glob("chain-*"))
    assert len(chained) == 1
    assert user.subid_start is not None and user.subid_start + 1233 in _owners(chained[0])

    other = workspace / "cases" / "linked-base-other"  # a build of another image
    other.mkdir()
    base_ref = contexts["basic"].joinpath("Dockerfile").read_text().split()[1]
    (other / "Dockerfile").write_text(f"FROM {base_ref}\nRUN echo other > /other\n")
    other.chmod(0o755)
    (other / "Dockerfile").chmod(0o644)
    done = _pybuild(user, ["build", "--progress", "plain", "--gc-keep-storage", "1m",
                           str(other)], XDG_DATA_HOME=str(data))
    assert done.returncode == 0, done.stderr
    assert "build cache over its bound of 1.0 MiB: removed the least recently used" in \
        done.stderr
    assert not chained[0].exists()


# -- the pieces, without a user -----------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "fix"), [
    ("user/max_user_namespaces", "0", "sysctl -w user.max_user_namespaces=28633"),
    ("kernel/unprivileged_userns_clone", "0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
])
def test_disabled_user_namespaces_name_the_sysctl(tmp_path: Path, name: str, value: str,
                                                  fix: str) -> None:
    check_user_namespaces(tmp_path)  # nothing set: allowed
    (tmp_path / "sys" / name).parent.mkdir(parents=True)
    (tmp_path / "sys" / name).write_text(value + "\n")
    with pytest.raises(UserNamespaceUnavailable, match=fix):
        check_user_namespaces(tmp_path)


def test_subordinate_ranges_by_name_or_uid(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\n1001:300000:1000\n"
                      "alice:400000:0\nbroken line\n")
    assert subordinate_ranges("alice", 1001, subuid, None) == [
        IdRange(100000, 65536), IdRange(300000, 1000)]
    assert subordinate_ranges("carol", 1002, subuid, None) == []
    assert subordinate_ranges("alice", 1001, tmp_path / "missing", None) == []


def test_the_range_suggested_is_one_no_user_holds(tmp_path: Path) -> None:
    # Suggesting 100000-165535 to every user would give two users the same ids, each
    # able to reach the other's build files (useradd gives each its own range).
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\nbob:165536:65536\nbroken line\n")
    subgid.write_text("alice:100000:65536\ncarol:231072:1000\n")
    assert free_subordinate_range([subuid, subgid]) == IdRange(232072, 65536)
    subgid.write_text("alice:100000:65536\n")
    assert free_subordinate_range([subuid, subgid]) == IdRange(231072, 65536)
    assert free_subordinate_range([tmp_path / "missing"]) == IdRange(100000, 65536)
    subuid.write_text("dave:300000:65536\n")  # a gap below a range is free
    assert free_subordinate_range([subuid]) == IdRange(100000, 65536)


def test_id_map_puts_the_user_at_0_and_the_ranges_after_it() -> None:
    assert id_map(1000, [IdRange(100000, 65536), IdRange(300000, 10)]) == [
        0, 1000, 1, 1, 100000, 65536, 65537, 300000, 10]


def test_the_overlay_probe_reads_whether_index_took_from_the_mount_table() -> None:
    from builder.sandbox.rootfs import _index_took

    merged = Path("/s p/merged")
    line = (b"82 52 0:45 / /s\\040p/merged rw,relatime - overlay overlay "
            b"rw,lowerdir=l,upperdir=u,workdir=w,redirect_dir=nofollow,uuid=on,userxattr%s\n")
    other = b"22 1 8:1 / / rw,relatime - ext4 /dev/vda rw,index=on\n"
    assert _index_took(other + line % b",index=on", merged)
    assert not _index_took(other + line % b",index=off", merged)
    # Not shown: the kernel's default for index, which the module parameter tells.
    default = Path("/sys/module/overlay/parameters/index")
    if default.exists():
        assert _index_took(other + line % b"", merged) == (default.read_text().strip() == "Y")


@pytest.mark.slow
def test_add_of_a_git_repository_as_a_non_root_user_gives_the_root_build_digest(
        workspace: Path, user: SystemUser) -> None:
    # git runs as the user (fetching over git:// from loopback), the files become the
    # image's with --chown mapped through the user's namespace, and the layer's
    # owners, modes and times are the root build's.
    from tests.helpers.git_server import commit, new_repository, serving_git

    root = workspace / "git"
    work = new_repository(root / "app.git")
    (work / "bin").mkdir()
    (work / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (work / "bin" / "run.sh").chmod(0o775)
    (work / "README").write_text("v1\n")
    commit(work, "v1", when="@1600000000 +0000")
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    data = workspace / "git-user-data"
    data.mkdir()
    os.chown(data, user.uid, user.gid)
    with serving_git(root) as url:
        ctx = workspace / "git-ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM scratch\nADD {url}/app.git /src\n"
                                        f"ADD --chown=1000:1000 {url}/app.git#main:bin /bin/\n")
        subprocess.run(["chmod", "-R", "a+rX", str(ctx)], check=True)
        as_root, rootless = _both_ways(user, ctx, workspace / "git-root-storage", data)
    assert rootless.returncode == 0, rootless.stderr
    assert rootless.stdout.strip() == as_root
    assert as_root.startswith("sha256:")


@pytest.mark.parametrize(("instruction", "name"), [("COPY . /ctx/", "private"),
                                                 ("ADD private /ctx/", "private"),
                                                 ("COPY key.pem /", "key.pem")])
def test_a_context_path_the_user_cannot_read_is_named_with_the_fixes(
        workspace: Path, user: SystemUser, contexts: dict[str, Path], instruction: str,
        name: str) -> None:
    # Another user's 0700 directory or 0600 file in the context: the docker CLI fails to
    # send it too; the error names it inside the context, with the fixes (it named a path
    # of the machine and said to make room there or make it writable).
    base_ref = contexts["basic"].joinpath("Dockerfile").read_text().split()[1]
    ctx = workspace / "cases" / f"unreadable-{instruction.split()[0].lower()}-{name}"
    (ctx / "private").mkdir(parents=True)
    (ctx / "private" / "key.pem").write_text("not for the build\n")
    (ctx / "key.pem").write_text("not for the build\n")
    (ctx / "Dockerfile").write_text(f"FROM {base_ref}\n{instruction}\n")
    subprocess.run(["chmod", "-R", "a+rX", str(ctx)], check=True)
    os.chmod(ctx / "private", 0o700)
    os.chmod(ctx / "key.pem", 0o600)
    done = _pybuild(user, ["build", "--progress", "quiet", str(ctx)])
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ERROR: Dockerfile:2: {instruction.split()[0]}: cannot read {name!r} in the build "
        "context: permission denied; make it readable by the user who runs the build, or "
        "leave it out of the context with .dockerignore")
