"""Layers: a build step's filesystem changes -> a deterministic, chunked-frame OCI layer,
and back (safe extraction onto a rootfs).

- :mod:`.changeset`  the data model (:class:`Changeset`, :class:`Entry`, :class:`Whiteout`)
- :mod:`.overlay`    a changeset from an overlayfs upper directory
- :mod:`.snapshot`   a changeset from a before/after comparison (no overlayfs)
- :mod:`.tarwriter`  the deterministic tar stream
- :mod:`.chunked`    content-defined chunks -> independently compressed frames
- :mod:`.extract`    applying an untrusted layer to a rootfs
- :mod:`.importdir`  a directory as one layer (base images from a rootfs)

Everything here is synchronous and streams with bounded memory: call it from a thread
(``asyncio.to_thread``) when an event loop is running.
"""

# Names are imported from their modules on first use (PEP 562): a cached build needs
# few of them, and the compressors (pyfastcdc, zstandard) cost start-up time.

import typing as _typing

from cas.lazy import lazy_attributes as _lazy_attributes

if _typing.TYPE_CHECKING:
    from .changeset import (
        OPAQUE_WHITEOUT,
        WHITEOUT_PREFIX,
        Changeset,
        Entry,
        EntryKind,
        Whiteout,
    )
    from .chunked import (
        DEFAULT_AVG_CHUNK,
        MEDIA_TYPE_GZIP,
        MEDIA_TYPE_TAR,
        MEDIA_TYPE_ZSTD,
        LayerBlob,
        write_frames,
        write_layer,
        write_layer_file,
    )
    from .errors import (
        ChangesetError,
        LayerError,
        LayerFormatError,
        OverlayFeatureUnsupported,
        SourceChanged,
        UnsafeLayerEntry,
        WhiteoutUnsupported,
    )
    from .extract import ApplyReport, apply_layer, open_layer
    from .importdir import import_directory, make_busybox_rootfs
    from .overlay import OVERLAY_MOUNT_OPTIONS, changeset_from_upper
    from .snapshot import (
        Snapshot,
        StatRecord,
        changeset_of_tree,
        diff_snapshot,
        take_snapshot,
    )
    from .tarwriter import iter_tar, write_tar

_WHERE = {
    "OPAQUE_WHITEOUT": "changeset",
    "WHITEOUT_PREFIX": "changeset",
    "Changeset": "changeset",
    "Entry": "changeset",
    "EntryKind": "changeset",
    "Whiteout": "changeset",
    "DEFAULT_AVG_CHUNK": "chunked",
    "MEDIA_TYPE_GZIP": "chunked",
    "MEDIA_TYPE_TAR": "chunked",
    "MEDIA_TYPE_ZSTD": "chunked",
    "LayerBlob": "chunked",
    "write_frames": "chunked",
    "write_layer": "chunked",
    "write_layer_file": "chunked",
    "ChangesetError": "errors",
    "LayerError": "errors",
    "LayerFormatError": "errors",
    "OverlayFeatureUnsupported": "errors",
    "SourceChanged": "errors",
    "UnsafeLayerEntry": "errors",
    "WhiteoutUnsupported": "errors",
    "ApplyReport": "extract",
    "apply_layer": "extract",
    "open_layer": "extract",
    "import_directory": "importdir",
    "make_busybox_rootfs": "importdir",
    "OVERLAY_MOUNT_OPTIONS": "overlay",
    "changeset_from_upper": "overlay",
    "Snapshot": "snapshot",
    "StatRecord": "snapshot",
    "changeset_of_tree": "snapshot",
    "diff_snapshot": "snapshot",
    "take_snapshot": "snapshot",
    "iter_tar": "tarwriter",
    "write_tar": "tarwriter",
}

__all__ = [
    "DEFAULT_AVG_CHUNK",
    "MEDIA_TYPE_GZIP",
    "MEDIA_TYPE_TAR",
    "MEDIA_TYPE_ZSTD",
    "OPAQUE_WHITEOUT",
    "OVERLAY_MOUNT_OPTIONS",
    "WHITEOUT_PREFIX",
    "ApplyReport",
    "Changeset",
    "ChangesetError",
    "Entry",
    "EntryKind",
    "LayerBlob",
    "LayerError",
    "LayerFormatError",
    "OverlayFeatureUnsupported",
    "Snapshot",
    "SourceChanged",
    "StatRecord",
    "UnsafeLayerEntry",
    "Whiteout",
    "WhiteoutUnsupported",
    "apply_layer",
    "changeset_from_upper",
    "changeset_of_tree",
    "diff_snapshot",
    "import_directory",
    "iter_tar",
    "make_busybox_rootfs",
    "open_layer",
    "take_snapshot",
    "write_frames",
    "write_layer",
    "write_layer_file",
    "write_tar",
]


__getattr__ = _lazy_attributes(__name__, _WHERE)
