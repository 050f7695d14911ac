"""``COPY --chmod`` modes (builder.steps.chmod): octal, and symbolic as chmod(1) takes them,
applied to each entry's own mode (BSD setmode rules, as BuildKit's library)."""

from __future__ import annotations

import pytest

from builder.steps.chmod import parse_chmod

# spec, mode before, directory?, mode after
CASES = [
    ("0755", 0o4644, False, 0o755),
    ("640", 0o777, True, 0o640),
    ("+x", 0o644, False, 0o755),
    ("u+x", 0o644, False, 0o744),
    ("+w", 0o444, False, 0o644),  # no class: the umask's bits (022) are left alone
    ("a+w", 0o444, False, 0o666),
    ("go-rwx", 0o755, False, 0o700),
    ("a=r", 0o777, False, 0o444),
    ("u=rwX,go=rX", 0o644, False, 0o644),  # X: only directories and executables
    ("u=rwX,go=rX", 0o700, False, 0o755),
    ("u=rwX,go=rX", 0o600, True, 0o755),
    ("a+rX,go-w", 0o600, False, 0o644),
    ("a+rX,go-w", 0o700, True, 0o755),
    ("=rw,+X", 0o755, False, 0o755),  # X looks at the mode before the change (BSD)
    ("g=u", 0o640, False, 0o660),
    ("go=u-w", 0o700, False, 0o755),
    ("o=", 0o777, False, 0o770),
    ("u+s,g+s", 0o755, False, 0o6755),
    ("+t", 0o777, True, 0o1777),
    ("o+t", 0o777, True, 0o777),  # sticky for "o" alone is ignored (BSD)
    ("u-x,g+w", 0o755, False, 0o675),
]


@pytest.mark.parametrize("spec,before,is_dir,after", CASES)
def test_modes(spec: str, before: int, is_dir: bool, after: int) -> None:
    assert oct(parse_chmod(spec).apply(before, is_dir)) == oct(after)


@pytest.mark.parametrize("spec", ["", "u", "x", "u+q", "9", "10000", "u+x,", ",u+x", "+x y"])
def test_invalid_modes(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_chmod(spec)


@pytest.mark.parametrize("spec", ["999", "0758", "64o"])
def test_a_mode_that_is_not_octal_says_so(spec: str) -> None:
    # (it said "invalid literal for int() with base 8", Python's words)
    with pytest.raises(ValueError, match=rf"^mode {spec} is not octal \(digits 0 to 7 only\)$"):
        parse_chmod(spec)
