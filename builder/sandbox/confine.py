"""What runc confines a container with besides namespaces and capabilities, for a RUN
step (BuildKit's RUN gets containerd's and moby's default spec; ``--security=insecure``
lifts all of it). Stdlib only: the stage (``_stage.py``) loads this file by its path.

- *Read-only paths*: the kernel-wide knobs under /proc stay readable but not writable (a
  root step could otherwise set the build machine's ``kernel.core_pattern``, or reboot
  it through sysrq-trigger).
- *Masked paths* read as empty: a file is /dev/null, a directory an empty read-only tmpfs.
- *Seccomp*: the kernel's keyring is refused, as Docker's default profile refuses it
  (``keyctl``, ``add_key``, ``request_key`` fail with EPERM). Keyrings are not
  namespaced: without the filter a root step reads and writes the build machine's root
  user keyring (credentials other programs keep there). The rest of Docker's profile
  mainly guards what the step's dropped capabilities refuse already (mounts, modules,
  reboot, raw I/O), so only this part is applied. The filter is a classic BPF program:
  it checks the audit architecture first (an x86-64 process can make i386 and x32
  calls, an arm64 one 32-bit arm calls), then the call's number; the rest is allowed.
"""

from __future__ import annotations

import ctypes
import os
import struct

__all__ = ["KEYRING_CALLS", "MASKED_PATHS", "READONLY_PATHS", "bwrap_protect_args",
           "install_filter", "keyring_filter", "protected"]

READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")

# audit architecture -> (add_key, request_key, keyctl) numbers of that ABI
KEYRING_CALLS = {
    0xC000003E: (248, 249, 250),  # x86-64 (x32 calls: the same numbers | 0x40000000)
    0x40000003: (286, 287, 288),  # i386
    0xC00000B7: (217, 218, 219),  # aarch64
    0x40000028: (309, 310, 311),  # arm
}
_X86_64, _X32_BIT = 0xC000003E, 0x40000000
_LD_W_ABS, _AND_K, _JEQ_K, _RET_K = 0x20, 0x54, 0x15, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def protected(root: str, prefix: str) -> list[tuple[str, str]]:
    """``(path, "ro" | "dir" | "file")`` for the read-only and masked paths under
    ``prefix`` that exist in ``root``: how each is to be covered."""
    found = [(p, "ro") for p in READONLY_PATHS] + [(p, "mask") for p in MASKED_PATHS]
    return [(path, "ro" if how == "ro" else "dir" if os.path.isdir(root + path) else "file")
            for path, how in found
            if path.startswith(prefix + "/") and os.path.exists(root + path)]


def bwrap_protect_args() -> list[str]:
    """bwrap's arguments that cover the paths of the /proc it mounts. This side's /proc
    is the source of the read-only binds: a sysctl file shows the values of its reader's
    namespaces, whichever procfs instance it is reached through."""
    ops = {"ro": ["--ro-bind", "{0}", "{0}"], "dir": ["--tmpfs", "{0}", "--remount-ro", "{0}"],
           "file": ["--dev-bind", "/dev/null", "{0}"]}
    return [arg.format(path) for path, how in protected("", "/proc") for arg in ops[how]]


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def keyring_filter() -> bytes:
    """The program (``struct sock_filter`` entries) that fails the keyring calls with EPERM."""
    prog = [_insn(_LD_W_ABS, 4)]  # seccomp_data.arch
    for arch, numbers in KEYRING_CALLS.items():
        body = [_insn(_LD_W_ABS, 0)]  # seccomp_data.nr
        if arch == _X86_64:
            body.append(_insn(_AND_K, ~_X32_BIT & 0xFFFFFFFF))
        for i, nr in enumerate(numbers):
            body.append(_insn(_JEQ_K, nr, jt=len(numbers) - i))  # to the EPERM return
        body += [_insn(_RET_K, _ALLOW), _insn(_RET_K, _ERRNO | 1)]
        prog.append(_insn(_JEQ_K, arch, jf=len(body)))
        prog += body
    prog.append(_insn(_RET_K, _ALLOW))
    return b"".join(prog)


def install_filter(program: bytes) -> None:
    """Apply ``program`` to this thread and everything it executes from now on (needs
    CAP_SYS_ADMIN in its user namespace, or no_new_privs)."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot install the seccomp filter: {os.strerror(err)}")
