"""Running another architecture's programs: emulators registered with binfmt_misc.

A RUN step for a foreign platform (``--platform linux/arm64`` on an amd64 host) runs its
programs under an emulator (qemu-user-static) that the kernel starts for every ELF file of
that architecture, as BuildKit does. The kernel learns which emulator to start from
binfmt_misc entries (``Documentation/admin-guide/binfmt-misc.rst``)::

    /proc/sys/fs/binfmt_misc/status            enabled | disabled (every entry)
    /proc/sys/fs/binfmt_misc/<name>            one entry, e.g. qemu-aarch64:
        enabled
        interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
        flags: PF
        offset 0
        magic 7f454c460201010000000000000000000200b700
        mask ffffffffffffff00fffffffffffffffffeffffff

An entry is found by what it matches (an ELF header of the architecture, as the kernel
compares it: ``header & mask == magic & mask``), not by its name, so entries registered
by Debian's qemu-user-static, by ``tonistiigi/binfmt`` or by hand all count. The entry
must carry the ``F`` (fix binary) flag: the kernel then opens the emulator when it is
registered, and a step's root filesystem does not need to hold it.

``PYBUILD_BINFMT_MISC`` names another directory to read the entries from (where
binfmt_misc is mounted elsewhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["BINFMT_MISC", "EmulatorMissing", "binfmt_dir", "check_emulator",
           "find_emulator"]

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")

# OCI architecture -> (ELF class: 1 32-bit / 2 64-bit, data: 1 little / 2 big endian,
# e_machine); and the name of the qemu-user emulator for it.
_ELF = {
    "amd64": (2, 1, 62), "386": (1, 1, 3), "arm64": (2, 1, 183), "arm": (1, 1, 40),
    "ppc64le": (2, 1, 21), "ppc64": (2, 2, 21), "s390x": (2, 2, 22),
    "riscv64": (2, 1, 243), "mips64le": (2, 1, 8), "mips64": (2, 2, 8),
    "mipsle": (1, 1, 8), "mips": (1, 2, 8), "loong64": (2, 1, 258),
}
_QEMU = {"amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm",
         "mips64le": "mips64el", "mipsle": "mipsel", "loong64": "loongarch64"}


class EmulatorMissing(Exception):
    """No usable emulator is registered for an architecture (one line: what to do)."""


@dataclass(frozen=True, slots=True)
class Emulator:
    name: str  # the binfmt_misc entry
    interpreter: str
    flags: str


def binfmt_dir() -> Path:
    """Where the binfmt_misc entries are read (``PYBUILD_BINFMT_MISC``, else /proc's)."""
    return Path(os.environ.get("PYBUILD_BINFMT_MISC") or BINFMT_MISC)


def _elf_headers(arch: str) -> list[bytes]:
    """ELF headers (the first 20 bytes) of an executable and of a PIE for ``arch``."""
    cls, data, machine = _ELF[arch]
    order: Literal["little", "big"] = "little" if data == 1 else "big"
    ident = bytes([0x7F, 0x45, 0x4C, 0x46, cls, data, 1]) + bytes(9)
    return [ident + kind.to_bytes(2, order) + machine.to_bytes(2, order)
            for kind in (2, 3)]  # ET_EXEC, ET_DYN


def _read_entry(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line in ("enabled", "disabled"):
            fields["state"] = line
            continue
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    return fields


def _matches(fields: dict[str, str], headers: list[bytes]) -> bool:
    try:
        magic = bytes.fromhex(fields["magic"])
        mask = bytes.fromhex(fields.get("mask") or "ff" * len(magic))
        offset = int(fields.get("offset", "0"))
    except (KeyError, ValueError):
        return False  # an extension entry, or one this cannot read
    if len(mask) != len(magic):
        return False
    for header in headers:
        part = header[offset:offset + len(magic)]
        if len(part) == len(magic) and all(
                (h & m) == (g & m) for h, g, m in zip(part, magic, mask)):
            return True
    return False


def find_emulator(arch: str, where: Path | None = None) -> Emulator | None:
    """The enabled binfmt_misc entry that runs ``arch``'s ELF programs, or None."""
    where = where or binfmt_dir()
    if arch not in _ELF:
        return None
    status = _read_entry(where / "status")
    if status is None or status.get("state") != "enabled":
        return None
    headers = _elf_headers(arch)
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return None
    for name in names:
        if name in ("status", "register"):
            continue
        fields = _read_entry(where / name)
        if fields is None or fields.get("state") != "enabled":
            continue
        if _matches(fields, headers):
            return Emulator(name, fields.get("interpreter", ""), fields.get("flags", ""))
    return None


def check_emulator(platform: str, arch: str) -> Emulator:
    """The emulator for ``arch`` (of the platform ``platform``, for messages); raises
    :class:`EmulatorMissing` naming the package and the registration to do."""
    where = binfmt_dir()
    if arch not in _ELF:
        raise EmulatorMissing(f"cannot run {platform} programs: pybuild knows no emulator "
                              f"for architecture {arch}")
    found = find_emulator(arch, where)
    qemu = f"qemu-{_QEMU.get(arch, arch)}"
    if found is None:
        mount = ("" if (where / "status").exists() else
                 f"mount -t binfmt_misc binfmt_misc {where} && ")
        raise EmulatorMissing(
            f"no emulator for {platform} is registered with binfmt_misc ({where}): install "
            f"one with `apt-get install qemu-user-static binfmt-support` and register it "
            f"with `{mount}update-binfmts --enable {qemu}` (or run "
            f"`docker run --privileged --rm tonistiigi/binfmt --install {arch}`)")
    if "F" not in found.flags:
        raise EmulatorMissing(
            f"the emulator for {platform} ({where / found.name}, {found.interpreter}) is "
            "registered without the F (fix binary) flag, so a build's root filesystem "
            "cannot reach it; register it again with flag F (Debian's qemu-user-static "
            "package does: `update-binfmts --disable "
            f"{found.name} && update-binfmts --enable {found.name}`)")
    return found
