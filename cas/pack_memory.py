"""Packs in memory: :class:`MemoryPacks`, a :class:`~cas.packs.PackBackend` for unit tests
of the layers above, and the model of the backend contract."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .errors import StoreCorrupt

__all__ = ["MemoryPacks"]


class _MemoryWriter:
    def __init__(self, backend: MemoryPacks, name: str) -> None:
        self.name = name
        self._backend = backend

    @property
    def size(self) -> int:
        return len(self._backend._packs[self.name])

    def append(self, data: bytes | memoryview) -> int:
        with self._backend._lock:
            buf = self._backend._packs[self.name]
            at = len(buf)
            buf += data
            return at

    def append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        return [self.append(p) for p in parts]

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryPacks:
    """Packs in memory: for unit tests of the layers above."""

    def __init__(self) -> None:
        self._packs: dict[str, bytearray] = {}
        self._lock = threading.Lock()

    def create(self, name: str) -> _MemoryWriter:
        with self._lock:
            if name in self._packs:
                raise FileExistsError(name)
            self._packs[name] = bytearray()
        return _MemoryWriter(self, name)

    def open_append(self, name: str, size: int) -> _MemoryWriter:
        with self._lock:
            buf = self._packs.setdefault(name, bytearray())
            del buf[size:]
        return _MemoryWriter(self, name)

    def read(self, name: str, offset: int, length: int) -> bytes:
        buf = self._packs.get(name)
        if buf is None:
            raise StoreCorrupt(f"pack {name} is missing")
        data = bytes(buf[offset : offset + length])
        if len(data) != length:
            raise StoreCorrupt(f"pack {name} is short")
        return data

    def local_path(self, name: str) -> None:
        return None

    def free(self, name: str, offset: int, length: int) -> None:
        buf = self._packs.get(name)
        if buf is not None:
            buf[offset : offset + length] = bytes(len(buf[offset : offset + length]))

    def delete(self, name: str) -> None:
        self._packs.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._packs)

    def size(self, name: str) -> int | None:
        buf = self._packs.get(name)
        return None if buf is None else len(buf)

    def allocated(self) -> int:
        return sum(len(b) for b in self._packs.values())
