"""OCI objects as typed, frozen dataclasses: descriptors, manifests, indexes, image configs.

Covers the OCI image spec (``descriptor.md``, ``manifest.md``, ``image-index.md``,
``config.md``) and Docker's schema 2 manifest and manifest list, which share the OCI
shapes under other media types.

Contract for every class:

- ``from_json(doc)`` takes the decoded JSON object, checks the spec's required fields and
  types and raises :class:`InvalidObject` (a ``ValueError``) naming the field path and what
  was expected. ``parse(raw)`` does the same from bytes.
- ``to_json()`` returns a JSON-ready dict. Fields this module does not model (vendor
  extensions, future spec fields) are kept in ``extra`` and written back, so
  ``X.from_json(d).to_json() == d`` for any valid ``d``. (The registry stores manifests
  byte-exact regardless; these objects are for validation and for building images.)

Modules: ``mediatypes``, ``fields`` (typed getters, strict JSON, :class:`InvalidObject`),
``descriptors`` (:class:`Descriptor`, :class:`Platform`), ``manifests`` (:class:`Manifest`,
:class:`Index`, :func:`parse_manifest`), ``config`` (:class:`ImageConfig` and its parts).
"""

from __future__ import annotations

from .config import (
    ContainerConfig,
    History,
    ImageConfig,
    RootFS,
)
from .descriptors import (
    Descriptor,
    Platform,
)
from .fields import (
    MAX_SIZE,
    InvalidObject,
)
from .manifests import (
    Index,
    Manifest,
    parse_manifest,
)
from .mediatypes import (
    ARTIFACT_EMPTY_JSON,
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

__all__ = [
    "ARTIFACT_EMPTY_JSON",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V1",
    "DOCKER_MANIFEST_V1_SIGNED",
    "EMPTY_JSON",
    "EMPTY_JSON_DIGEST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_SIZE",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "ContainerConfig",
    "Descriptor",
    "History",
    "ImageConfig",
    "Index",
    "InvalidObject",
    "Manifest",
    "Platform",
    "RootFS",
    "parse_manifest",
]
