"""``COPY --chmod`` / ``ADD --chmod``: an octal mode, or a symbolic one as chmod(1) takes
it (``+x``, ``u=rwX,go=rX``, ``g=u-w``), as BuildKit's Dockerfile front end accepts since
syntax 1.14.

A symbolic mode is applied to each copied entry's own mode, as chmod(1) does (BuildKit
uses a port of BSD ``setmode(3)``): a clause without ``ugoa`` applies to all classes but
not to the bits of the usual umask, 022 (``+w`` is ``u+w``); ``X`` is execute for
directories and for entries that had an execute bit; ``s``/``t`` are setuid/setgid and
sticky (ignored for ``o`` alone); ``u``/``g``/``o`` after the operator copy that class's
bits.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModeChange", "parse_chmod"]

_CLASS = {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}
_SHIFT = {"u": 6, "g": 3, "o": 0}
_PERM = {"r": 0o444, "w": 0o222, "x": 0o111}
_STANDARD = 0o6777  # what '=' clears without a class (not the sticky bit)
_ALL = 0o7777
_UNMASKED = _ALL & ~0o022  # what a clause without a class may set


@dataclass(frozen=True)
class _Op:
    """One step: ``+``/``-`` set or clear ``bits`` (and ``xbits`` for directories and
    executables); ``copy`` copies class ``source``'s bits into ``targets`` (``=`` clears
    first)."""

    kind: str
    bits: int = 0
    xbits: int = 0
    source: str = ""
    targets: str = ""
    op: str = ""


@dataclass(frozen=True)
class ModeChange:
    """A parsed ``--chmod``: ``apply(mode, is_dir)`` gives an entry's new permission bits."""

    spec: str
    ops: tuple[_Op, ...]

    def apply(self, mode: int, is_dir: bool) -> int:
        old = mode & _ALL
        new = old
        executable = bool(old & 0o111) or is_dir
        for op in self.ops:
            bits = op.bits | (op.xbits if executable else 0)
            if op.kind == "+":
                new |= bits
            elif op.kind == "-":
                new &= ~bits
            else:
                value = (new >> _SHIFT[op.source]) & 0o7
                for target in op.targets:
                    shift = _SHIFT[target]
                    if op.op in "-=":
                        new &= ~(((0o7 if op.op == "=" else value) << shift) & op.bits)
                    if op.op in "+=":
                        new |= (value << shift) & op.bits
        return new & _ALL


def parse_chmod(spec: str) -> ModeChange:
    """Parse ``spec``; ValueError when it is neither an octal mode up to 07777 nor a
    symbolic one."""
    if spec[:1].isdigit():
        if spec.strip("01234567"):
            raise ValueError(f"mode {spec} is not octal (digits 0 to 7 only)")
        value = int(spec, 8)
        if value > _ALL:
            raise ValueError(f"mode {spec} is over 07777")
        return ModeChange(spec, (_Op("-", _ALL), _Op("+", value)))
    if not spec:
        raise ValueError("empty mode")
    ops: list[_Op] = []
    for clause in spec.split(","):
        ops.extend(_clause(clause, spec))
    return ModeChange(spec, tuple(ops))


def _clause(clause: str, spec: str) -> list[_Op]:
    i, who = 0, 0
    while i < len(clause) and clause[i] in _CLASS:
        who |= _CLASS[clause[i]]
        i += 1
    classes = "".join(c for c in "ugo" if who & _CLASS[c] & 0o777) or "ugo"
    if i == len(clause):
        raise ValueError(f"{spec!r}: expected +, - or = in {clause!r}")
    out: list[_Op] = []
    while i < len(clause):
        op = clause[i]
        i += 1
        if op not in "+-=":
            raise ValueError(f"{spec!r}: expected +, - or = in {clause!r}")
        perm, xperm, assigned, target = 0, 0, False, who
        while i < len(clause) and clause[i] not in "+-=":
            c = clause[i]
            i += 1
            if c in _PERM:
                perm |= _PERM[c]
            elif c == "X":
                xperm = 0o111
            elif c in "st":
                if not who or who & ~0o007:  # ignored for "o" alone
                    perm |= 0o6000 if c == "s" else 0o1000
                    target |= 0o1000 if c == "t" and who else 0
            elif c in _SHIFT:
                if perm or xperm:
                    out.extend(_set(op, target, perm, xperm))
                    perm = xperm = 0
                    assigned = assigned or op == "="
                assigned = assigned or op == "="
                out.append(_Op("copy", _ALL, source=c, targets=classes, op=op))
            else:
                raise ValueError(f"{spec!r}: unknown permission {c!r}")
        if perm or xperm or (op == "=" and not assigned):
            out.extend(_set(op, target, perm, xperm))
    return out


def _set(op: str, who: int, perm: int, xperm: int) -> list[_Op]:
    """``op`` applied to ``perm`` (and ``xperm``, see ``X``) for the classes in ``who``
    (none: all, minus the umask's bits)."""
    mask = who or _UNMASKED
    if op == "=":
        return [_Op("-", who or _STANDARD), _Op("+", mask & perm, mask & xperm)]
    return [_Op(op, mask & perm, mask & xperm)]
