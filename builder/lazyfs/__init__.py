"""Lazy layers: a layer that is still at its cache source, read through FUSE.

- :mod:`.toc`: a layer's table of contents (entries, and where each file's bytes lie);
- :mod:`.tree`: the inodes a TOC describes, as an extracted lower directory has them;
- :mod:`.fuse`: the read-only FUSE file system that serves a tree (``/dev/fuse``);
- :mod:`.layers`: :class:`LazyMounts`, a build's mounted lazy layers.
"""
