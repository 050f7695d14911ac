"""Helpers shared by the test suites and the benchmarks.

Import them as ``tests.helpers.<module>`` (run pytest as ``python3 -m pytest`` from the
repository root, as ``tests/run`` does). They are test infrastructure: they never import
``cas``, ``registry`` or ``builder``, so they can check pybuild's output independently.

- ``tools``: find external tools; skip locally, fail in CI when one is missing.
- ``docker_engine``: use a running Docker engine or start a private ``dockerd``.
- ``rootfs``: a tiny root filesystem made from busybox-static.
- ``images``: pack a root filesystem as an OCI image layout or a docker-archive.
- ``registries``: start a registry process on a free port, wait for ``/v2/``, stop it.
- ``clients``: podman, buildah, skopeo and umoci command lines with private storage.
- ``cli``: run ``pybuild`` as a process; check that it fails with one clean line.
"""
