"""Errors raised by the layer machinery.

::

    LayerError
    ├── ChangesetError            an upper directory or tree cannot be turned into a changeset
    │   └── OverlayFeatureUnsupported   redirect_dir / metacopy entries in an overlay upper dir
    ├── SourceChanged             a file changed while its layer was being written
    ├── WhiteoutUnsupported       the storage's filesystem refuses overlay whiteouts
    └── LayerFormatError          a layer blob is not a (compressed) tar we can read
        ├── UnsafeLayerEntry      an entry would write outside the rootfs, or is malformed
        │   └── LinkToDirectory   a hard link entry names a directory
        └── MissingLinkTarget     a hard link's target is neither in the layer nor below it

Every message names the problem, the offending path or entry, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ChangesetError",
    "LayerError",
    "LayerFormatError",
    "LinkToDirectory",
    "MissingLinkTarget",
    "OverlayFeatureUnsupported",
    "SourceChanged",
    "UnsafeLayerEntry",
    "WhiteoutUnsupported",
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


class WhiteoutUnsupported(LayerError):
    def __init__(self, path: str, cause: str) -> None:
        super().__init__(
            f"cannot record the deletion of {path!r} in the storage directory: its "
            "filesystem refuses both forms of overlay whiteout, a 0/0 character device "
            f"and an empty file with an overlay.whiteout xattr ({cause}); an overlayfs on "
            "a kernel before 6.7, such as a container's own root filesystem, does. Put "
            "the storage on ext4, xfs, btrfs or tmpfs (--storage DIR or PYBUILD_STORAGE; "
            "in a container, a volume or an emptyDir)"
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


class LinkToDirectory(UnsafeLayerEntry):
    """A hard link entry whose target ``target`` (as the entry names it) is a directory:
    no file system links one (link(2) fails with EPERM, and Docker's untar with it)."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, f"hard link to a directory ({target!r})")
        self.target = target


class MissingLinkTarget(LayerFormatError):
    """A hard link entry whose target the layer does not hold before it; ``searched``:
    whether the layers below were looked in too (else the caller may retry with them)."""

    def __init__(self, name: str, target: str, searched: bool) -> None:
        where = ("neither in the layer (before the link) nor in the layers below it"
                 if searched else "not in the layer or archive before the link")
        super().__init__(
            f"layer entry {name!r}: hard link target {target!r} does not exist (it is "
            f"{where}); the image or archive is malformed: rebuild it so that the link "
            "names a file that exists")
        self.name = name
        self.target = target
        self.searched = searched
