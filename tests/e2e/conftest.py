"""Fixtures for end-to-end tests with real clients: a Docker engine, a busybox image and
the registries under test.

``registry_under_test`` is parametrized over every registry kind that exists:
``distribution`` (CNCF Distribution, the reference) always, ``pybuild`` as soon as
``python3 -m builder serve`` does. Tests written against it run unchanged against both.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.clients import ContainerStorage
from testkit.docker_engine import DockerEngine, remove_tree
from testkit.images import (
    Image,
    busybox_image,
    write_docker_archive,
    write_oci_layout,
)
from testkit.registries import (
    RunningRegistry,
    distribution_registry,
    pybuild_configured_registry,
    pybuild_serve_available,
    registry_of_kind,
)
from testkit.rootfs import find_busybox, make_busybox_rootfs
from testkit.tools import require_tool

E2E_DIR = Path(__file__).resolve().parent

# The tag `docker load` gives the busybox archive.
BUSYBOX_ARCHIVE_TAG = "pybuild-e2e/busybox:latest"


def _registries_under_test() -> list[str]:
    kinds = ["distribution"]
    if pybuild_serve_available():
        # pybuild-postgres: pybuild serve with its metadata in PostgreSQL (replicas' setup)
        kinds += ["pybuild", "pybuild-postgres"]
    return kinds


REGISTRIES_UNDER_TEST = _registries_under_test()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox-static root filesystem (see testkit.rootfs)."""
    if find_busybox() is None:
        require_tool("/bin/busybox")
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def busybox(busybox_rootfs: Path) -> Image:
    """The one-layer busybox image (Cmd ["sh"])."""
    return busybox_image(busybox_rootfs)


@pytest.fixture(scope="session")
def busybox_layout(busybox: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image as an OCI image layout, tagged ``latest``."""
    return write_oci_layout(busybox, tmp_path_factory.mktemp("layout") / "busybox")


@pytest.fixture(scope="session")
def busybox_archive(busybox: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox image as a docker-archive that loads as ``BUSYBOX_ARCHIVE_TAG``."""
    return write_docker_archive(
        busybox, tmp_path_factory.mktemp("archive") / "busybox.tar",
        repo_tags=[BUSYBOX_ARCHIVE_TAG],
    )


@pytest.fixture
def loaded_busybox(docker_engine: DockerEngine, busybox_archive: Path) -> str:
    """The busybox archive loaded into the engine with ``docker load``; returns its tag."""
    out = docker_engine.run("load", "-i", str(busybox_archive)).stdout
    assert f"Loaded image: {BUSYBOX_ARCHIVE_TAG}" in out
    return BUSYBOX_ARCHIVE_TAG


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A fresh CNCF Distribution registry (docker-registry) on 127.0.0.1:<free port>."""
    require_tool("docker-registry")
    with distribution_registry(tmp_path / "distribution") as running:
        yield running


@pytest.fixture(params=REGISTRIES_UNDER_TEST)
def registry_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningRegistry]:
    """A fresh, empty registry of each kind under test, on 127.0.0.1:<free port>."""
    kind = request.param
    if kind == "distribution":
        require_tool("docker-registry")
    if kind == "pybuild-postgres":
        url = request.getfixturevalue("postgres").create_database(f"e2e_{uuid.uuid4().hex[:12]}")
        settings = {"database": {"url": url, "migrate": True}}
        with pybuild_configured_registry(tmp_path / kind, settings) as running:
            yield running
        return
    with registry_of_kind(kind, tmp_path / kind) as running:
        yield running


@pytest.fixture
def container_storage() -> Iterator[ContainerStorage]:
    """Private, short-pathed containers/storage for podman and buildah (removed after)."""
    base = Path(tempfile.mkdtemp(prefix="pbc", dir="/tmp"))
    try:
        yield ContainerStorage.under(base)
    finally:
        remove_tree(base)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for image names in engines shared by several tests."""
    return uuid.uuid4().hex[:10]
