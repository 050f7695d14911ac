"""Errors raised by the layer machinery.

::

    LayerError
    ├── ChangesetError            an upper directory or tree cannot be turned into a changeset
    │   └── OverlayFeatureUnsupported   redirect_dir / metacopy entries in an overlay upper dir
    ├── SourceChanged             a file changed while its layer was being written
    └── LayerFormatError          a layer blob is not a (compressed) tar we can read
        └── UnsafeLayerEntry      an entry would write outside the rootfs, or is malformed

Every message names the problem, the offending path or entry, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ChangesetError",
    "LayerError",
    "LayerFormatError",
    "OverlayFeatureUnsupported",
    "SourceChanged",
    "UnsafeLayerEntry",
]


class LayerError(Exception):
    """Base of every error this package raises."""


class ChangesetError(LayerError):
    """A directory cannot be described as a changeset (unsupported file type, ...)."""


class OverlayFeatureUnsupported(ChangesetError):
    def __init__(self, path: str, feature: str, fix: str) -> None:
        super().__init__(
            f"overlay upper entry {path!r} uses {feature}, which a layer cannot express "
            f"without reading the lower layers; {fix}"
        )
        self.path = path
        self.feature = feature


class SourceChanged(LayerError):
    def __init__(self, path: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{path!r} changed while its layer was written (expected {expected} bytes, "
            f"read {actual}); nothing may write to a step's filesystem while its layer is "
            "being created — rerun the step"
        )
        self.path = path


class LayerFormatError(LayerError):
    """The blob is not a tar stream (plain, gzip or zstd) that can be applied."""


class UnsafeLayerEntry(LayerFormatError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f"refusing layer entry {name!r}: {why}; the layer is malformed or hostile — "
            "nothing outside the rootfs was written"
        )
        self.name = name
        self.why = why
