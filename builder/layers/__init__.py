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
