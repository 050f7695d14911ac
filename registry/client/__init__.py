"""pybuild's registry client: pull, push and copy images; the local image store.

Modules, mirroring ``registry/server/``:

===================  ==================================================================
``connections``      pooled HTTP/1.1 connections driven by worker threads (no aiohttp)
``remote``           :class:`RegistryClient`: the Distribution API's endpoints
``session``          the one request policy under them (auth challenges, retries,
                     redirects, unreachable hosts); client options, errors and scopes
``auth``             credentials (flags, env, Docker's config.json, helpers) and the
                     ``WWW-Authenticate`` flows
``pull``             one blob from a registry into the local store, verified, resumable
``pull_parts``       a blob pulled in Range parts, piece by piece where the registry
                     offers its recipes
``pull_sink``        the ingest a pulled blob is written into: in order, checkpointed
``transfer``         transfer options and :class:`BlobError`, shared by pull and push
``push``             one blob to a registry, resumable, mounted where possible
``copy``             whole images between registries, the local store, OCI layouts and
                     docker archives
``image_store``      the local image store (names in ``images.db``, blobs in ``cas``)
``layouts``          OCI image layouts and ``docker save`` archives
``layout_claims``    what a failed writer of a layout takes back (others' blobs stay)
``refs``             image references with Docker's defaults
``progress``         bars, plain lines or JSON events
``cli``              ``pybuild pull/push/copy/images/rmi/login/logout``
``errors``           :class:`ClientError`, the base of every exception below
===================  ==================================================================

Exceptions (all :class:`ClientError`)::

    AuthError, TransportError, WireError, BlobError, LayoutError, ImageNotFound,
    InvalidReference

Names are imported from their modules on first use (PEP 562), so ``pybuild pull`` loads
neither the copy machinery for archives nor anything of the server.
"""

import typing as _typing

from cas.lazy import lazy_attributes as _lazy_attributes

if _typing.TYPE_CHECKING:
    from .auth import AuthError, Credentials
    from .connections import WireError
    from .copy import CopyOptions, CopyResult, Endpoint, copy_image, parse_endpoint
    from .errors import ClientError
    from .image_store import ImageNotFound, ImageStore
    from .layouts import LayoutError
    from .progress import Progress
    from .pull import BlobError, TransferOptions
    from .refs import ImageRef, InvalidReference, parse_image_ref
    from .remote import ClientOptions, RegistryClient, TransportError

_WHERE = {
    "AuthError": "auth",
    "Credentials": "auth",
    "WireError": "connections",
    "CopyOptions": "copy",
    "CopyResult": "copy",
    "Endpoint": "copy",
    "copy_image": "copy",
    "parse_endpoint": "copy",
    "ClientError": "errors",
    "ImageNotFound": "image_store",
    "ImageStore": "image_store",
    "LayoutError": "layouts",
    "Progress": "progress",
    "BlobError": "pull",
    "TransferOptions": "pull",
    "ImageRef": "refs",
    "InvalidReference": "refs",
    "parse_image_ref": "refs",
    "ClientOptions": "remote",
    "RegistryClient": "remote",
    "TransportError": "remote",
}

__all__ = [
    "AuthError",
    "BlobError",
    "ClientError",
    "ClientOptions",
    "CopyOptions",
    "CopyResult",
    "Credentials",
    "Endpoint",
    "ImageNotFound",
    "ImageRef",
    "ImageStore",
    "InvalidReference",
    "LayoutError",
    "Progress",
    "RegistryClient",
    "TransferOptions",
    "TransportError",
    "WireError",
    "copy_image",
    "parse_endpoint",
    "parse_image_ref",
]

__getattr__ = _lazy_attributes(__name__, _WHERE)
