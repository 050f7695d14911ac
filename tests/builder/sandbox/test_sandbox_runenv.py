"""What a RUN step sees of /proc, /sys and /dev, against runc's default spec (BuildKit's
RUN): the kernel-wide settings read-only, the masked paths empty (``insecure`` lifts
both), a POSIX message queue filesystem at /dev/mqueue, and no way to the machine's
kernel keyring (seccomp)."""

from __future__ import annotations

import errno
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sandbox_steps import Runner, require_root

# Harmless to write: kernel.hostname belongs to the step's own UTS namespace, so only the
# read-only mount can refuse it -- the same one that keeps kernel.core_pattern and every
# other machine-wide setting out of a root step's reach.
WRITE_SYSCTL = "echo buildkitsandbox > /proc/sys/kernel/hostname && echo wrote"


def test_kernel_settings_are_read_only(run: Runner) -> None:
    step = run(f"{WRITE_SYSCTL}; cat /proc/sys/kernel/hostname")
    assert "wrote" not in step.stdout
    assert any("Read-only file system" in line for _, line in step.lines), step.lines
    assert step.stdout == ["buildkitsandbox"]  # still readable


def test_masked_paths_read_empty(run: Runner) -> None:
    step = run("for f in /proc/timer_list /proc/keys; do [ -e $f ] && echo $f $(wc -c < $f); "
               "done; [ -d /sys/firmware ] && echo /sys/firmware $(ls -A /sys/firmware | wc -l)"
               "; true")
    assert step.stdout, "the kernel has none of the masked paths"
    for line in step.stdout:
        assert line.split()[1] == "0", step.stdout


def test_insecure_step_may_write_kernel_settings(run: Runner) -> None:
    step = run(WRITE_SYSCTL, insecure=True)
    assert step.stdout == ["wrote"]


def test_dev_mqueue_is_the_steps_own(run: Runner) -> None:
    step = run("grep ' /dev/mqueue ' /proc/self/mountinfo | cut -d' ' -f9; stat -c %a /dev/mqueue")
    assert step.stdout == ["mqueue", "1777"]


def test_step_runs_under_a_seccomp_filter(run: Runner) -> None:
    assert run("grep '^Seccomp:' /proc/self/status").stdout == ["Seccomp:\t2"]
    assert run("grep '^Seccomp:' /proc/self/status", insecure=True).stdout == ["Seccomp:\t0"]


# The keyring calls' numbers on this machine's own ABI (confine.KEYRING_CALLS).
KEYCTL = {"x86_64": 250, "aarch64": 219}
KEYRING_PROBE = """
import ctypes, sys
from builder.sandbox.confine import install_filter, keyring_filter
libc = ctypes.CDLL(None, use_errno=True)
before = libc.syscall({nr}, 0, -4, 0)  # KEYCTL_GET_KEYRING_ID of the user keyring
install_filter(keyring_filter())
after = libc.syscall({nr}, 0, -4, 0)
print(before > 0, after, ctypes.get_errno(), libc.getpid() > 0)
"""


def test_keyring_filter_refuses_the_machines_keyring() -> None:
    """Keyrings are not namespaced: a step must not reach the build machine's (Docker's
    default seccomp profile refuses them with EPERM); other calls go through."""
    require_root()
    nr = KEYCTL.get(platform.machine())
    if nr is None:
        pytest.skip(f"no keyctl number known for {platform.machine()}")
    probe = subprocess.run([sys.executable, "-c", KEYRING_PROBE.format(nr=nr)],
                           capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[3])
    assert probe.stdout.split() == ["True", "-1", str(errno.EPERM), "True"]
