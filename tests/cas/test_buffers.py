import random

import pytest

from cas.buffers import BufferPool, copy_into


@pytest.mark.parametrize("size", [0, 10, 64 << 10, (1 << 20) + 3])
def test_copy_into_copies_every_kind_of_source(size: int) -> None:
    data = random.Random(size).randbytes(size)
    for src in (data, bytearray(data), memoryview(bytearray(data)), memoryview(data)):
        dst = bytearray(size + 8)
        copy_into(memoryview(dst)[4 : 4 + size], src)
        assert dst[4 : 4 + size] == data and dst[:4] == b"\0" * 4 and dst[-4:] == b"\0" * 4


@pytest.mark.parametrize("size", [100, 300 << 10, 3 << 20])
def test_copy_into_moves_bytes_to_the_front_of_their_own_buffer(size: int) -> None:
    # What a cutter does when it compacts: source and destination overlap.
    data = random.Random(size).randbytes(size + size // 3)
    buf = bytearray(data)
    view = memoryview(buf)
    copy_into(view[:size], view[size // 3 :])
    assert buf[:size] == data[size // 3 :]


def test_copy_into_refuses_a_length_mismatch() -> None:
    with pytest.raises(ValueError, match="copy of 5 bytes into 4"):
        copy_into(memoryview(bytearray(4)), b"12345")


def test_the_pool_keeps_a_bounded_number_per_size() -> None:
    pool = BufferPool(keep=2)
    bufs = [pool.take(100) for _ in range(3)]
    assert len({id(b) for b in bufs}) == 3 and all(len(b) == 100 for b in bufs)
    for b in bufs:
        pool.give(b)
    again = [pool.take(100) for _ in range(3)]
    assert sum(any(a is b for b in bufs) for a in again) == 2  # two were kept, one is new
    assert len(pool.take(50)) == 50
