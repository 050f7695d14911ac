"""SHA-256 states of committed blobs: a blob that begins as one of them is hashed only
from where the two part.

SHA-256 (FIPS 180-4 §6.2) hashes 64-byte blocks in order and carries eight 32-bit words
from one block to the next: those words after the first N bytes (N a multiple of 64),
and N, are all it takes to go on hashing from byte N. A store opened with
``StoreConfig.digest_states`` keeps them for every sha256 blob it commits, every
:data:`STEP` bytes (``root/states/<hex>``: 32 bytes per MiB). A blob committed from a
recipe whose first pieces are those of such a blob (the next version of a layer, whose
change is in its middle) starts its digest from the last state inside them
(``Ingest.hash_from``): those bytes are neither read nor hashed again.

Nothing is trusted blindly: a state file carries the BLAKE3 of its content (a torn or
damaged one is ignored); the ingest records which pieces the state stands for and, at
its commit, compares them with the pieces its recipe begins with, and hashes every byte
when they differ; a digest that does not come out as expected after a resumed hash is
computed again from every byte before the commit fails. A wrong state can cost time,
never commit wrong bytes nor fail a right blob.

Setting SHA-256's state needs its C interface: OpenSSL's libcrypto (``SHA256_Init``,
``SHA256_Update``, ``SHA256_Final``, through ctypes), the library Python's own hashlib
uses, and as fast (the GIL is released while it hashes). Where it cannot be loaded, or
fails its self-test, :func:`available` is False and hashlib hashes, keeping no states.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from .digest import new_hasher

if TYPE_CHECKING:
    from .digest import Hasher

__all__ = ["STEP", "Sha256", "available", "load_state", "new_state_hasher", "save_states", "sweep_states"]

#: Bytes between two kept states.
STEP = 1 << 20

_MAGIC = b"PBS1"
_HEAD = struct.Struct(">4sII")  # magic, step, count
_WORDS = struct.Struct(">8I")


class _Ctx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (include/openssl/sha.h), unchanged since 0.9.8.
    _fields_ = [("h", ctypes.c_uint32 * 8), ("Nl", ctypes.c_uint32), ("Nh", ctypes.c_uint32),
                ("data", ctypes.c_uint32 * 16), ("num", ctypes.c_uint), ("md_len", ctypes.c_uint)]


class _PyBuffer(ctypes.Structure):
    # Py_buffer (Include/pybuffer.h; part of the limited API since 3.11).
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    for name in ("libcrypto.so.3", "libcrypto.so"):
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.POINTER(_Ctx)]
        update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]
        return lib
    return None


def new_state_hasher(algorithm: str, keep_states: bool) -> Hasher:
    """A new hasher of ``algorithm``: one that keeps SHA-256 states (:class:`Sha256`)
    when ``keep_states`` (the store keeps them) and the algorithm is sha256."""
    return Sha256() if keep_states and algorithm == "sha256" else new_hasher(algorithm)


@functools.cache
def available() -> bool:
    """Whether SHA-256 states can be read and set here (checked once against hashlib)."""
    if _libcrypto() is None:
        return False
    # Small (ten steps of 128 bytes, a partial block at the end): every store open runs
    # it, and each step is a call through ctypes (264 KB took 20 ms here).
    data = bytes(range(256)) * 5 + b"xyz"
    whole = Sha256(step=128)
    whole.update(memoryview(data)[:1000])
    whole.update(data[1000:])
    if whole.hexdigest() != hashlib.sha256(data).hexdigest():
        return False
    resumed = Sha256(step=128, offset=128 * 3, state=whole.states[2])
    resumed.update(data[128 * 3:])
    return resumed.hexdigest() == whole.hexdigest()


class Sha256:
    """SHA-256 that keeps its state every ``step`` bytes (:attr:`states`: the state after
    ``step``, ``2 * step``, ... bytes), or that starts from a state after ``offset`` bytes
    (then :attr:`states` starts with ``before``: the states of those bytes)."""

    __slots__ = ("_ctx", "_lib", "_pos", "_step", "states")

    def __init__(self, step: int = STEP, offset: int = 0, state: bytes | None = None,
                 before: list[bytes] | None = None) -> None:
        lib = _libcrypto()
        if lib is None or step % 64:
            raise RuntimeError("SHA-256 states need libcrypto and a step of whole blocks")
        self._lib, self._step, self._pos = lib, step, offset
        self._ctx = _Ctx()
        lib.SHA256_Init(ctypes.byref(self._ctx))
        self.states: list[bytes] = list(before or [])
        if state is not None:
            if offset % 64 or len(state) != 32:
                raise ValueError("a SHA-256 state stands after a whole number of blocks")
            self._ctx.h[:] = _WORDS.unpack(state)
            bits = offset * 8
            self._ctx.Nl, self._ctx.Nh = bits & 0xFFFFFFFF, bits >> 32

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        view = _PyBuffer()
        _get_buffer(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes
        try:
            addr, left = view.buf or 0, view.len
            while left:
                n = min(left, self._step - self._pos % self._step)
                self._lib.SHA256_Update(ctypes.byref(self._ctx), addr, n)
                addr += n
                left -= n
                self._pos += n
                if self._pos % self._step == 0:
                    self.states.append(_WORDS.pack(*self._ctx.h))
        finally:
            _release_buffer(ctypes.byref(view))

    def hexdigest(self) -> str:
        ctx = _Ctx.from_buffer_copy(self._ctx)  # SHA256_Final ends a context: end a copy
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctypes.byref(ctx))
        return out.raw.hex()


def _path(root: Path, encoded: str) -> Path:
    return root / "states" / encoded


def save_states(root: Path, encoded: str, states: list[bytes], step: int = STEP) -> None:
    """Keep ``states`` of the sha256 blob ``encoded`` (written whole, then renamed)."""
    if not states:
        return
    body = _HEAD.pack(_MAGIC, step, len(states)) + b"".join(states)
    path = _path(root, encoded)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{encoded}.{os.getpid()}.tmp")
    tmp.write_bytes(body + blake3.blake3(body).digest())
    os.replace(tmp, path)


def load_state(root: Path, encoded: str, upto: int) -> tuple[int, bytes, list[bytes]] | None:
    """The last kept state of blob ``encoded`` at or before byte ``upto``: (its offset,
    the state, the states up to it, for :class:`Sha256`'s ``before``), or None (no file, a damaged one, nothing that
    early)."""
    try:
        raw = _path(root, encoded).read_bytes()
    except OSError:
        return None
    if len(raw) < _HEAD.size + 32 or blake3.blake3(raw[:-32]).digest() != raw[-32:]:
        return None
    magic, step, count = _HEAD.unpack_from(raw)
    if magic != _MAGIC or step != STEP or len(raw) != _HEAD.size + 32 * count + 32:
        return None
    n = min(count, upto // step)
    if n == 0:
        return None
    states = [raw[_HEAD.size + 32 * i: _HEAD.size + 32 * (i + 1)] for i in range(n)]
    return n * step, states[-1], states


def sweep_states(root: Path, kept: Callable[[str], bool]) -> int:
    """Remove the state files of blobs that are gone (``kept(encoded)`` False), and
    files a writer left half-made; how many were removed (best effort)."""
    removed = 0
    try:
        names = os.listdir(root / "states")
    except OSError:
        return 0
    for name in names:
        if name.startswith(".") or not kept(name):
            try:
                (root / "states" / name).unlink()
                removed += 1
            except OSError:
                pass
    return removed
