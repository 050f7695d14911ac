"""The self-test that decides whether SHA-256 states are used (cas.digest_states.available):
it passes where libcrypto is there (the state tests skip otherwise, so a self-test that
wrongly failed would hide them), and it fails when setting a state is wrong."""

from __future__ import annotations

import struct

import pytest

from cas import digest_states
from cas.digest_states import _libcrypto, available


def test_the_self_test_passes_where_libcrypto_is_loaded() -> None:
    if _libcrypto() is None:
        pytest.fail("no libcrypto with SHA256_Init: kept SHA-256 states cannot be tested")
    assert available()


class _Reversed(struct.Struct):
    """Kept states read as they are, but set with their eight words in reverse order."""

    def unpack(self, buffer: bytes) -> tuple[int, ...]:  # type: ignore[override]
        return tuple(reversed(super().unpack(buffer)))


def test_the_self_test_fails_when_a_state_is_set_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available.__wrapped__()
    monkeypatch.setattr(digest_states, "_WORDS", _Reversed(">8I"))
    assert not available.__wrapped__()
