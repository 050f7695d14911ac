"""One way to open a store: ``await open_store(StoreConfig.at(storage))``.

Every command opens its store here (``pybuild storage``, ``serve``, ``push``/``pull``/
``copy`` through the client's image store, ``build``, ``builder prune``), so the
backends a :class:`~cas.location.StoreConfig` names are the ones every command uses.
"""

from __future__ import annotations

from .core import StoreCore
from .location import StoreConfig
from .store import Store

__all__ = ["StoreConfig", "open_store"]


async def open_store(config: StoreConfig) -> Store:
    """Open (creating) the store ``config`` describes; close it with ``Store.close``
    (or ``async with``). Errors of a full or read-only file system are the store's
    typed StorageError, naming the path."""
    return Store(await StoreCore.open(config))
