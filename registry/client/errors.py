"""The client's exceptions: one base, so a command can catch every client failure.

::

    ClientError                     anything the client could not do; the message says
    │                               what failed and what to do next
    ├── AuthError                   credentials missing, rejected or unreadable (auth)
    ├── TransportError              a request failed after its retries (remote)
    ├── WireError, ConnectionError  a request could not be sent or read (connections)
    ├── BlobError                   a blob could not be transferred (pull)
    ├── LayoutError                 an OCI layout or docker archive is unusable (layouts)
    ├── ImageNotFound, LookupError  no such image in the local store (image_store)
    └── InvalidReference, ValueError  not an image reference (refs)

Errors a registry answers with come back as :class:`registry.errors.RegistryError`,
decoded with the same error table the server uses.
"""

from __future__ import annotations

__all__ = ["ClientError"]


class ClientError(Exception):
    """Something the client could not do; the message says what and what to do next."""
