"""Helpers shared by the test suites and the benchmarks (``bench/``): real tools and peers.

Import them as ``testkit.<module>`` from the repository root (``python3 -m pytest`` and
``python3 -m bench`` both run from there). They never import ``cas``, ``registry`` or
``builder``, so they can check pybuild's output independently, and they never import
pytest: a missing tool calls :data:`testkit.tools.on_missing`, which raises
:class:`~testkit.tools.ToolMissing` (the benchmarks report the side as not measured) and
which the test suite replaces with skip-or-fail (``tests/conftest.py``).

- ``tools``: find external tools; what happens when one is missing.
- ``docker_engine``: use a running Docker engine or start a private ``dockerd``.
- ``rootfs``: a tiny root filesystem made from busybox-static.
- ``images``: pack a root filesystem as an OCI image layout or a docker-archive.
- ``registries``: start a registry process on a free port, wait for ``/v2/``, stop it.
- ``clients``: podman, buildah, skopeo and umoci command lines with private storage.
"""
