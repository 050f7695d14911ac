"""STOPSIGNAL values: the signal names and numbers BuildKit accepts (Linux).

BuildKit checks the expanded value with moby's ``signal.ParseSignal``: a nonzero decimal
number (any, as Go's ``strconv.Atoi`` reads it), or a name from its Linux table, with or
without ``SIG``, in any case. Anything else fails the build ("invalid signal").
"""

from __future__ import annotations

import re

__all__ = ["check_signal"]

_NAMES = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    "RTMIN", "RTMAX", *(f"RTMIN+{n}" for n in range(1, 16)), *(f"RTMAX-{n}" for n in range(1, 15)),
})
_NUMBER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def check_signal(value: str) -> None:
    """Raise ValueError unless ``value`` names a signal as BuildKit's STOPSIGNAL wants."""
    if _NUMBER.fullmatch(value):
        if int(value) != 0 and -2**63 <= int(value) < 2**63:
            return
    elif value.upper().removeprefix("SIG") in _NAMES:
        return
    raise ValueError(f"invalid signal {value!r}: expected a signal name (SIGTERM, TERM, "
                     "SIGRTMIN+3) or a nonzero number (15)")
