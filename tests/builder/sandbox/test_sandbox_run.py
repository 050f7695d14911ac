"""RUN steps on a busybox root, with both executors (bwrap and namespaces + chroot)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from builder.sandbox import (
    BindMount,
    Executor,
    Network,
    RootfsMode,
    RunFailed,
    SandboxSetupError,
)
from tests.helpers.sandbox_steps import PATH, Runner, run_mount

# Docker's default capability set as a capability mask (see _stage.DEFAULT_CAPS).
DOCKER_CAPS = 0x00000000A80425FB


def test_env_is_exactly_the_specs(run: Runner, executor: Executor) -> None:
    step = run(("/bin/cat", "/proc/self/environ"), env=(PATH, "FOO=bar baz", "EMPTY="),
               workdir="/tmp")
    env = step.stdout[0].split("\0")[:-1]
    if executor is Executor.BWRAP:
        # bwrap always exports PWD after its chdir (documented in runner.py)
        assert env.pop() == "PWD=/tmp"
    assert env == [PATH, "FOO=bar baz", "EMPTY="]


def test_home_from_passwd_on_request(run: Runner, base_root: Path, tmp_path: Path) -> None:
    from builder.sandbox import RunSpec, run_step

    def home(user: str, state: str, env: tuple[str, ...] = (PATH,)) -> tuple[str, ...]:
        result = run_step(RunSpec(argv=("/bin/sh", "-c", "echo $HOME"), env=env, user=user),
                          lowers=[base_root], state_dir=tmp_path / state, set_home=True)
        return result.output_tail

    assert home("", "a") == ("/root",)
    assert home("tester", "b") == ("/home/tester",)
    assert home("tester", "c", (PATH, "HOME=/x")) == ("/x",)
    assert run("echo $HOME").stdout == [""]  # without set_home: exactly the spec's env


def test_workdir_is_cwd_and_created_in_the_layer(run: Runner) -> None:
    step = run("pwd", workdir="/srv/app")
    assert step.stdout == ["/srv/app"]
    assert (step.changes / "srv/app").is_dir()


def test_existing_workdir_leaves_no_trace(run: Runner) -> None:
    step = run("pwd > /dev/null", workdir="/tmp")
    assert not (step.changes / "tmp").exists()


def test_root_runs_with_dockers_capabilities_and_hostname(run: Runner) -> None:
    step = run("id -u; hostname; grep CapEff /proc/self/status", hostname="builder1")
    assert step.stdout[0] == "0"
    assert step.stdout[1] == "builder1"
    assert int(step.stdout[2].split()[1], 16) == DOCKER_CAPS


def test_pid_namespace_is_fresh(run: Runner) -> None:
    step = run("ls /proc | grep -c '^[0-9]'")
    assert int(step.stdout[0]) <= 4  # the shell, ls, grep (and bwrap's init)


def test_tmp_writes_stay_in_the_layer(run: Runner) -> None:
    step = run("echo data > /tmp/file")
    assert (step.changes / "tmp/file").read_text() == "data\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("tester", "1000 1000 1000 50"),
        ("1000", "1000 1000 1000 50"),
        ("tester:staff", "1000 50 50"),
        ("nobody:1234", "65534 1234 1234"),
        ("4321", "4321 0 0"),
        ("root", "0 0 0"),
    ],
)
def test_user_is_resolved_against_the_images_passwd(
    run: Runner, user: str, expected: str
) -> None:
    step = run('echo "$(id -u) $(id -g) $(id -G)"', user=user, run_executor=Executor.AUTO)
    assert step.stdout == [expected]


def test_files_made_by_a_user_belong_to_that_user(run: Runner) -> None:
    step = run("touch /tmp/mine", user="tester", run_executor=Executor.AUTO)
    st = os.lstat(step.changes / "tmp/mine")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert step.result.executor is Executor.CHROOT


def test_a_user_cannot_write_roots_files(run: Runner) -> None:
    with pytest.raises(RunFailed):
        run("echo x >> /etc/passwd", user="tester", run_executor=Executor.AUTO)


def test_network_none_has_only_loopback(run: Runner) -> None:
    step = run("ls /sys/class/net; cat /proc/net/dev | tail -n +3 | cut -d: -f1",
               network=Network.NONE)
    assert {line.strip() for line in step.stdout} == {"lo"}


def test_network_host_sees_the_hosts_interfaces(run: Runner) -> None:
    host = sorted(os.listdir("/sys/class/net"))
    step = run("cat /proc/net/dev | tail -n +3 | cut -d: -f1", network=Network.HOST)
    assert sorted(line.strip() for line in step.stdout) == host


def test_hosts_and_resolv_conf_are_read_only_and_not_in_the_layer(run: Runner) -> None:
    step = run(
        "cat /etc/hosts; test -e /etc/resolv.conf && echo resolv; "
        "echo x >> /etc/hosts || echo read-only",
        extra_hosts=(("registry.test", "10.1.2.3"),),
    )
    # BuildKit's file, not the build machine's: localhost, the hostname, the extra hosts
    assert step.stdout[:3] == ["127.0.0.1\tlocalhost buildkitsandbox",
                               "::1\tlocalhost ip6-localhost ip6-loopback",
                               "10.1.2.3\tregistry.test"]
    assert "resolv" in step.stdout or not Path("/etc/resolv.conf").exists()
    assert step.stdout[-1] == "read-only"
    assert not (step.changes / "etc").exists()  # not even a copied-up /etc


def test_resolv_conf_is_a_0644_copy_under_every_network(run: Runner) -> None:
    if not Path("/etc/resolv.conf").exists():
        pytest.skip("this machine has no /etc/resolv.conf to copy")
    host = Path("/etc/resolv.conf").read_text()
    for network in (Network.NONE, Network.HOST):
        # as BuildKit's: its own copy, whatever the host file's mode, also with no network
        step = run("stat -c '%a' /etc/resolv.conf; cat /etc/resolv.conf", network=network)
        assert step.stdout[0] == "644"
        assert "\n".join(step.stdout[1:]) == host.rstrip("\n")
        assert not (step.changes / "etc").exists()


def test_deletions_become_overlay_whiteouts(run: Runner) -> None:
    step = run("rm /etc/group; rm -r /home/tester")
    assert step.result.rootfs_mode is RootfsMode.OVERLAY
    for rel in ("etc/group", "home/tester"):
        st = os.lstat(step.changes / rel)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_copy_ups_are_complete_and_carry_no_overlay_bookkeeping(run: Runner) -> None:
    step = run("chmod 600 /etc/passwd; mv /home/tester /home/t2; ln /etc/group /etc/g2; "
               "rm -r /root; mkdir /root; touch /root/new")
    assert (step.changes / "etc/passwd").stat().st_size > 0  # metacopy=off: data copied up
    assert (step.changes / "home/t2").is_dir()  # redirect_dir=off: the dir was copied
    assert os.lstat(step.changes / "etc/g2").st_ino == os.lstat(step.changes / "etc/group").st_ino
    leftovers = []
    for dirpath, dirnames, filenames in os.walk(step.changes):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            for attr in os.listxattr(path, follow_symlinks=False):
                if attr.startswith("trusted.overlay.") and attr != "trusted.overlay.opaque":
                    leftovers.append((path, attr))
    assert leftovers == []
    assert os.getxattr(step.changes / "root", "trusted.overlay.opaque") == b"y"


def test_cache_mount_persists_and_stays_out_of_the_layer(run: Runner, tmp_path: Path) -> None:
    cache = run_mount("type=cache,target=/root/.cache/pkg,id=pkg")
    run("echo 1 > /root/.cache/pkg/seen", mounts=(cache,))
    step = run("cat /root/.cache/pkg/seen", mounts=(cache,))
    assert step.stdout == ["1"]
    assert not (step.changes / "root").exists()
    stored = list((tmp_path / "cache").glob("*/0/seen"))
    assert [p.read_text() for p in stored] == ["1\n"]


def test_cache_mount_uid_gid_mode_and_readonly(run: Runner) -> None:
    cache = run_mount("type=cache,target=/c,uid=1000,gid=50,mode=0750")
    step = run("stat -c '%u %g %a' /c", mounts=(cache,))
    assert step.stdout == ["1000 50 750"]
    ro = run_mount("type=cache,target=/c,ro")
    with pytest.raises(RunFailed):
        run("touch /c/x", mounts=(ro,))


def test_private_caches_in_use_get_their_own_directory(run: Runner, tmp_path: Path) -> None:
    from builder.sandbox.caches import lease_caches

    cache = run_mount("type=cache,target=/c,id=p,sharing=private")
    with lease_caches(tmp_path / "cache", [cache]) as held:
        step = run("touch /c/second", mounts=(cache,))
    assert not (held[0] / "second").exists()
    assert any((tmp_path / "cache").glob("*/1/second"))
    assert not (step.changes / "c").exists()


def test_secret_is_readable_inside_and_never_in_the_layer(
    run: Runner, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    os.chmod(secret, 0o644)
    mounts = (
        run_mount("type=secret,id=token"),
        run_mount("type=secret,id=token,target=/etc/app/key,mode=0440,uid=1000"),
        run_mount("type=secret,id=token,env=TOKEN"),
    )
    step = run(
        'cat /run/secrets/token; echo; stat -c "%a %u" /run/secrets/token /etc/app/key; '
        'echo "$TOKEN"; cp /run/secrets/token /tmp/copy',
        mounts=mounts,
        secrets={"token": secret},
    )
    assert step.stdout == ["s3cr3t", "400 0", "440 1000", "s3cr3t"]
    assert not (step.changes / "run").exists()
    assert not (step.changes / "etc/app").exists()
    assert (step.changes / "tmp/copy").read_text() == "s3cr3t"  # what the step copies stays
    assert stat.S_IMODE(secret.stat().st_mode) == 0o644  # the host file is left alone


def test_missing_optional_secret_is_skipped_required_fails(run: Runner) -> None:
    from builder.sandbox import SecretNotFound

    step = run("test -e /run/secrets/none && echo there || echo absent",
               mounts=(run_mount("type=secret,id=none"),))
    assert step.stdout == ["absent"]
    with pytest.raises(SecretNotFound, match="none"):
        run("true", mounts=(run_mount("type=secret,id=none,required"),))


def test_tmpfs_mount_is_memory_and_sized(run: Runner) -> None:
    step = run(
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo x > /scratch/f; "
        "dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>/dev/null || echo full",
        mounts=(run_mount("type=tmpfs,target=/scratch,size=1m"),),
    )
    assert step.stdout == ["tmpfs", "full"]
    assert not (step.changes / "scratch").exists()


def test_bind_mount_from_another_directory(run: Runner, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub/file").write_text("from elsewhere\n")
    ro = BindMount(target="/in", source="/sub").resolved(other)
    step = run("cat /in/file; touch /in/new 2>/dev/null || echo read-only", mounts=(ro,))
    assert step.stdout == ["from elsewhere", "read-only"]
    rw = BindMount(target="/in", source="sub", rw=True).resolved(other)
    step = run("echo changed > /in/file; cat /in/file", mounts=(rw,))
    assert step.stdout == ["changed"]
    assert (other / "sub/file").read_text() == "from elsewhere\n"  # rw writes are discarded
    assert not (step.changes / "in").exists()


def test_bind_source_stays_inside_its_root(run: Runner, tmp_path: Path) -> None:
    # '..' stops at the root and a link's absolute target starts there (as BuildKit):
    # nothing outside the root can be mounted
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    (ctx / "etc" / "inside.txt").write_text("inside\n")
    (tmp_path / "outside.txt").write_text("outside\n")
    (ctx / "up").symlink_to("../..")
    (ctx / "abs").symlink_to("/etc")
    for source in ("../..", "up", "/up/../.."):
        step = run("ls /x", mounts=(BindMount(target="/x", source=source).resolved(ctx),))
        assert step.stdout == ["abs", "etc", "up"], source
    step = run("ls /x", mounts=(BindMount(target="/x", source="abs").resolved(ctx),))
    assert step.stdout == ["inside.txt"]
    with pytest.raises(SandboxSetupError, match="not found"):
        run("true", mounts=(BindMount(target="/x", source="up/outside.txt").resolved(ctx),))


def test_failing_command_names_command_code_and_output(run: Runner) -> None:
    with pytest.raises(RunFailed) as info:
        run("for i in $(seq 1 80); do echo line$i; done; echo oops >&2; exit 3")
    err = info.value
    assert err.exit_code == 3
    assert len(err.output_tail) == 50
    assert err.output_tail[-1] == "oops" and err.output_tail[0] == "line32"
    assert "exit code 3" in str(err) and "exit 3" in str(err) and "oops" in str(err)


def test_missing_executable_fails_with_127(run: Runner) -> None:
    with pytest.raises(RunFailed) as info:
        run(("/no/such/program",))
    assert info.value.exit_code == 127
    assert "/no/such/program" in "\n".join(info.value.output_tail)


def test_output_streams_both_streams_in_order(run: Runner) -> None:
    step = run("echo out1; echo err1 >&2; printf 'no newline'")
    assert ("stdout", "out1") in step.lines and ("stderr", "err1") in step.lines
    assert step.lines[-1] == ("stdout", "no newline") or ("stdout", "no newline") in step.lines


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = os.lstat(p)
            h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_uid} {st.st_size}".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(p.read_bytes())
    return h.hexdigest()


def test_lowers_are_untouched_and_state_dir_holds_only_changes(
    run: Runner, base_root: Path
) -> None:
    before = _tree_digest(base_root)
    step = run("rm -rf /etc /home; echo x > /bin/new; chmod 700 /bin",
               mounts=(run_mount("type=tmpfs,target=/mnt/t"),))
    assert _tree_digest(base_root) == before
    assert [p.name for p in step.changes.parent.iterdir()] == ["upper"]
    with open("/proc/self/mountinfo") as f:
        assert str(step.changes.parent) not in f.read()


def test_copy_rootfs_fallback(run: Runner, base_root: Path) -> None:
    step = run("rm /etc/group; echo hi > /tmp/x; id -u", rootfs=RootfsMode.COPY,
               mounts=(run_mount("type=tmpfs,target=/scratch"),))
    assert step.result.rootfs_mode is RootfsMode.COPY
    assert step.stdout == ["0"]
    assert not (step.changes / "etc/group").exists()
    assert (step.changes / "etc/passwd").read_text() == (base_root / "etc/passwd").read_text()
    assert (step.changes / "tmp/x").read_text() == "hi\n"
    assert not (step.changes / "scratch").exists()
    assert (base_root / "etc/group").exists()


def test_from_scratch_leaves_only_what_the_step_wrote(run: Runner, base_root: Path) -> None:
    tools = BindMount(target="/tools", source="/bin").resolved(base_root)
    step = run(("/tools/busybox", "sh", "-c", "/tools/busybox echo hi > /out"),
               lowers=[], mounts=(tools,), env=("PATH=/tools",))
    assert sorted(os.listdir(step.changes)) == ["out"]
    assert (step.changes / "out").read_text() == "hi\n"


def test_one_cache_mounted_twice_in_a_step(run: Runner) -> None:
    mounts = (run_mount("type=cache,target=/a,id=same,sharing=locked"),
              run_mount("type=cache,target=/b,id=same,sharing=locked"))
    step = run("echo x > /a/f; cat /b/f", mounts=mounts)
    assert step.stdout == ["x"]


def test_background_processes_end_with_the_step(run: Runner) -> None:
    import time

    t0 = time.monotonic()
    step = run("(sleep 60 &); echo done")  # the orphan still holds stdout open
    assert step.stdout == ["done"]
    assert time.monotonic() - t0 < 20


def test_long_output_without_newlines_is_cut_into_lines(run: Runner) -> None:
    step = run("head -c 200000 /dev/zero | tr '\\0' a")
    assert sum(len(line) for line in step.stdout) == 200000
    assert max(len(line) for line in step.stdout) <= 64 * 1024 * 2


@pytest.mark.parametrize("mode", [RootfsMode.OVERLAY, RootfsMode.COPY], ids=lambda m: m.value)
def test_bind_mount_of_a_single_file(run: Runner, tmp_path: Path, mode: RootfsMode) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "requirements.txt").write_text("flask==3.0\n")
    (ctx / "sub/tool.sh").write_text("echo tool\n")
    mounts = (
        # onto a new name in an existing directory (the usual pattern)
        BindMount(target="/tmp/requirements.txt", source="requirements.txt").resolved(ctx),
        # onto a file the image has
        BindMount(target="/etc/group", source="/requirements.txt").resolved(ctx),
        # below directories that do not exist yet
        BindMount(target="/opt/new/deeper/tool.sh", source="sub/tool.sh").resolved(ctx),
    )
    step = run("cat /tmp/requirements.txt /etc/group; sh /opt/new/deeper/tool.sh; "
               "echo x > /tmp/requirements.txt 2>/dev/null || echo read-only; "
               "touch /opt/new/made", mounts=mounts, rootfs=mode)
    assert step.stdout == ["flask==3.0", "flask==3.0", "tool", "read-only"]
    changes = step.changes
    assert not (changes / "tmp/requirements.txt").exists()
    assert (changes / "opt/new/made").exists()  # the step's own file stays...
    assert not (changes / "opt/new/deeper").exists()  # ...the mount point and its new parent go
    if mode is RootfsMode.OVERLAY:
        assert not (changes / "etc/group").exists()  # mounting over a file changes nothing
    else:
        assert (changes / "etc/group").read_text().startswith("root:")


@pytest.mark.parametrize("mode", [RootfsMode.OVERLAY, RootfsMode.COPY], ids=lambda m: m.value)
def test_rw_bind_mount_of_a_single_file_discards_writes(
        run: Runner, tmp_path: Path, mode: RootfsMode) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "conf").write_text("one\n")
    rw = BindMount(target="/srv/conf", source="conf", rw=True).resolved(ctx)
    step = run("echo two >> /srv/conf && cat /srv/conf", mounts=(rw,), rootfs=mode)
    assert step.stdout == ["one", "two"]
    assert (ctx / "conf").read_text() == "one\n"
    assert not (step.changes / "srv").exists()


def test_bind_mount_type_mismatches_and_read_only_parents_name_the_problem(
        run: Runner, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "file").write_text("x\n")
    with pytest.raises(SandboxSetupError, match="cannot mount a file at /etc: the image has "
                                                "a directory there"):
        run("true", mounts=(BindMount(target="/etc", source="file").resolved(ctx),))
    with pytest.raises(SandboxSetupError, match="cannot mount a directory at /etc/passwd: the "
                                                "image has a file there"):
        run("true", mounts=(BindMount(target="/etc/passwd", source="dir").resolved(ctx),))
    nested = (BindMount(target="/in", source="dir").resolved(ctx),
              BindMount(target="/in/file", source="file").resolved(ctx))
    with pytest.raises(SandboxSetupError, match="cannot make the mount point /in/file: it "
                                                "would be inside a read-only mount"):
        run("true", mounts=nested)


def test_process_starts_as_runc_starts_it(run: Runner) -> None:
    """Default signal dispositions, an empty signal mask, only fds 0-2 and umask 022,
    whatever the calling Python process had (it ignores SIGPIPE and SIGXFSZ)."""
    old_umask = os.umask(0o077)
    try:
        step = run("grep -E '^Sig(Blk|Ign|Cgt):' /proc/self/status; ls /proc/$$/fd; umask")
    finally:
        os.umask(old_umask)
    assert step.stdout == ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000",
                           "SigCgt:\t0000000000000000", "0", "1", "2", "0022"]


def test_a_pipeline_writer_dies_when_its_reader_exits(run: Runner) -> None:
    """The writer of a pipeline gets SIGPIPE: a shell loop that ignores write errors ends
    (with SIGPIPE ignored it spins until the ``timeout`` kills it), and ``yes`` exits 141."""
    import time

    t0 = time.monotonic()
    step = run("timeout -s KILL 15 sh -c 'while :; do echo y; done 2>/dev/null | head -n 3';"
               " echo loop=$?; yes | head -c 1000 | wc -c;"
               " (yes; echo yes=$? >&2) 2>/tmp/status | head -c 1 >/dev/null; cat /tmp/status")
    assert step.stdout == ["y", "y", "y", "loop=0", "1000", "yes=141"]
    assert time.monotonic() - t0 < 15
