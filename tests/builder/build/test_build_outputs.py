"""``pybuild build -o/--output`` and ``--load`` as buildx takes them, checked with the real
consumers: ``skopeo inspect oci-archive:``/``oci:``, ``docker load`` and ``docker run`` on the
shared Docker engine, and pybuild's own engine client for ``--load``.

Builds run as ``python -m builder build`` processes, as a user runs them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from builder.outputs import Output, OutputError, parse_output
from testkit.docker_engine import DockerEngine
from testkit.tools import require_tool
from tests.helpers.disks import small_filesystem

ROOT = Path(__file__).resolve().parents[3]
EXPECTED_RUN = "hello from the context\nbuilt-by-pybuild\n"


# ---------------------------------------------------------------------------------------
# Parsing: buildx's syntax, and one clear error for what it cannot be


@pytest.mark.parametrize("text,expected", [
    ("out", Output("local", Path("out"))),
    ("./dir/sub", Output("local", Path("dir/sub"))),
    ("type=local,dest=out", Output("local", Path("out"))),
    ("-", Output("tar", None, stdout=True)),
    ("type=tar", Output("tar", None, stdout=True)),
    ("type=tar,dest=fs.tar", Output("tar", Path("fs.tar"))),
    ("type=oci,dest=img.tar", Output("oci", Path("img.tar"))),
    ("type=oci", Output("oci", None, stdout=True)),
    ("type=oci,dest=-", Output("oci", None, stdout=True)),
    ("type=oci,dest=layout,tar=false", Output("oci", Path("layout"), tar=False)),
    ("TYPE=oci, Dest=img.tar", Output("oci", Path("img.tar"))),
    ("type=docker", Output("docker")),
    ("type=docker,dest=x.tar", Output("docker", Path("x.tar"))),
    ("type=docker,dest=-", Output("docker", None, stdout=True)),
    ('type=docker,"name=a/b:1,c/d",dest=x.tar', Output("docker", Path("x.tar"),
                                                         names=("a/b:1", "c/d"))),
    ("type=image", Output("image")),
    ("type=image,name=r/x,push=true", Output("image", names=("r/x",), push=True)),
    ("type=registry,name=r/x", Output("registry", names=("r/x",), push=True)),
    ("type=cacheonly", Output("cacheonly")),
])
def test_output_values_parse_as_buildx(text: str, expected: Output) -> None:
    out = parse_output(text)
    assert out == expected
    assert out.loads == (text == "type=docker")


@pytest.mark.parametrize("text,message", [
    ("type=zip,dest=x", "type=zip is not an output type: use one of local, tar, oci, docker"),
    ("type=oci,dest=x,compression=zstd",
     "type=oci does not take compression=zstd (layers are compressed as --compression says); "
     "it takes dest, tar, name"),
    ("type=local,dest=x,tar=false", "type=local does not take tar=false; it takes dest"),
    ("type=local", "type=local needs dest=DIR"),
    ("dest=out", "dest=out: type= is missing: write type=TYPE,dest=out"),
    ("dest=out,tar=false", "type= is missing"),
    ("type=oci,tar=maybe,dest=x", "tar=maybe: use tar=true or tar=false"),
    ("type=oci,tar=false", "type=oci,tar=false writes a directory: give dest=DIR"),
    ("type=oci,dest", "'dest' is not KEY=VALUE"),
    (" ", "an empty value"),
])
def test_bad_output_values_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(OutputError) as info:
        parse_output(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# Real builds, real consumers


class Built:
    def __init__(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr.decode(errors="replace")

    @property
    def digest(self) -> str:
        assert self.returncode == 0, self.stderr
        return self.stdout.decode().strip().splitlines()[-1]


@pytest.fixture
def pybuild(tmp_path: Path) -> Callable[..., Built]:
    def run(*args: str, env: dict[str, str] | None = None) -> Built:
        full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        proc = subprocess.run([sys.executable, "-m", "builder", "build", "--storage",
                               str(tmp_path / "storage"), "--progress", "plain", *args],
                              capture_output=True, env=full, cwd=tmp_path, timeout=300,
                              check=False, stdin=subprocess.DEVNULL)
        return Built(proc)
    return run


@pytest.fixture
def engine(docker_engine: DockerEngine) -> DockerEngine:
    return docker_engine


@pytest.fixture
def image_name(engine: DockerEngine) -> Iterator[str]:
    """A unique name in the engine, removed afterwards."""
    name = f"pybuild-test/outputs-{uuid.uuid4().hex[:10]}:1"
    yield name
    engine.run("rmi", "--force", name, check=False)


def _skopeo_inspect(target: str) -> dict[str, object]:
    skopeo = require_tool("skopeo")
    proc = subprocess.run([skopeo, "inspect", "--raw", target], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_oci_archive_and_layout(context_of, pybuild, tmp_path: Path) -> None:
    ctx = context_of("docker-run")
    archive = tmp_path / "img.tar"
    layout = tmp_path / "layout"
    built = pybuild("-t", "example/app:2", "-o", f"type=oci,dest={archive}",
                    "-o", f"type=oci,dest={layout},tar=false", str(ctx))
    assert archive.is_file() and tarfile.is_tarfile(archive)
    for target in (f"oci-archive:{archive}", f"oci:{layout}:2"):
        raw = _skopeo_inspect(target)
        assert json.dumps(raw, separators=(",", ":")).encode()  # parsed
        assert raw["layers"] and raw["config"]  # type: ignore[truthy-bool]
    with tarfile.open(archive) as tf:
        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
        names = set(tf.getnames())
    assert index["manifests"][0]["digest"] == built.digest
    assert index["manifests"][0]["annotations"] == {
        "org.opencontainers.image.ref.name": "2",
        "io.containerd.image.name": "docker.io/example/app:2"}
    assert "oci-layout" in names and "manifest.json" not in names
    assert json.loads((layout / "index.json").read_text()) == index
    assert not list(tmp_path.glob(".img.tar.*"))  # no temporary file left
    # pybuild copy reads the archive back, as skopeo does
    copied = subprocess.run([sys.executable, "-m", "builder", "copy", "-q", "--storage",
                             str(tmp_path / "other"), f"oci-archive:{archive}:2", "local:example/app:3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert copied.returncode == 0, copied.stderr
    listed = subprocess.run([sys.executable, "-m", "builder", "images", "--json", "--storage",
                             str(tmp_path / "other")], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert [i["digest"] for i in json.loads(listed.stdout)] == [built.digest]


def test_docker_archive_loads_and_runs(context_of, pybuild, tmp_path: Path,
                                       engine: DockerEngine, image_name: str) -> None:
    archive = tmp_path / "x.tar"
    pybuild("-t", image_name, "-o", f"type=docker,dest={archive}",
            str(context_of("docker-run"))).digest
    load = engine.run("load", "-i", str(archive))
    assert f"Loaded image: {image_name}" in load.stdout
    assert engine.run_container(image_name) == EXPECTED_RUN


def test_load_into_the_engine_and_run(context_of, pybuild, engine: DockerEngine,
                                      image_name: str) -> None:
    built = pybuild("--load", "-t", image_name, str(context_of("docker-run")),
                    env={"DOCKER_HOST": engine.host})
    assert built.returncode == 0, built.stderr
    assert "loading the image into the Docker engine at" in built.stderr
    assert engine.run_container(image_name) == EXPECTED_RUN
    config = json.loads(engine.run("image", "inspect", image_name).stdout)[0]
    assert config["Config"]["WorkingDir"] == "/srv"


def test_type_docker_without_dest_loads(context_of, pybuild, engine: DockerEngine,
                                        image_name: str) -> None:
    built = pybuild("-o", f"type=docker,name={image_name}", str(context_of("docker-run")),
                    env={"DOCKER_HOST": engine.host})
    assert built.returncode == 0, built.stderr
    assert engine.run_container(image_name) == EXPECTED_RUN


def test_unreachable_engine_is_one_clear_line(context_of, pybuild, tmp_path: Path) -> None:
    sock = tmp_path / "no-engine.sock"
    built = pybuild("--load", "-t", "x/y", str(context_of("docker-run")),
                    env={"DOCKER_HOST": f"unix://{sock}"})
    assert built.returncode == 1
    assert "Traceback" not in built.stderr
    errors = [line for line in built.stderr.splitlines() if "ERROR" in line]
    assert errors == [f"ERROR: cannot reach the Docker engine at unix://{sock} (No such file "
                      "or directory): start it, or set DOCKER_HOST to its address"]
    assert "RUN" not in built.stderr  # it failed before building anything


def test_unsupported_docker_host_is_a_usage_error(context_of, pybuild) -> None:
    built = pybuild("--load", str(context_of("docker-run")),
                    env={"DOCKER_HOST": "ssh://me@host"})
    assert built.returncode == 2 and "Traceback" not in built.stderr
    assert "DOCKER_HOST=ssh://me@host: pybuild reaches engines at unix:///PATH or " \
           "tcp://HOST:PORT only" in built.stderr


def test_outputs_on_stdout(context_of, pybuild, tmp_path: Path) -> None:
    ctx = context_of("docker-run")
    rootfs = pybuild("-o", "-", str(ctx))
    assert rootfs.returncode == 0, rootfs.stderr
    with tarfile.open(fileobj=io.BytesIO(rootfs.stdout)) as tf:
        assert tf.extractfile("srv/run.txt").read() == b"built-by-pybuild\n"  # type: ignore[union-attr]
        assert tf.getmember("bin/busybox").isfile()
    oci = pybuild("-o", "type=oci", str(ctx))
    assert oci.returncode == 0, oci.stderr
    (tmp_path / "from-stdout.tar").write_bytes(oci.stdout)  # the archive and nothing else
    _skopeo_inspect(f"oci-archive:{tmp_path / 'from-stdout.tar'}")
    two = pybuild("-o", "-", "-o", "type=oci", str(ctx))
    assert two.returncode == 2 and "only one output can go to stdout" in two.stderr


def test_directory_shorthand_and_tar_file(context_of, pybuild, tmp_path: Path) -> None:
    ctx = context_of("docker-run")
    pybuild("-o", "rootfs", "-o", f"type=tar,dest={tmp_path / 'fs.tar'}", str(ctx)).digest
    assert (tmp_path / "rootfs" / "srv" / "run.txt").read_text() == "built-by-pybuild\n"
    with tarfile.open(tmp_path / "fs.tar") as tf:
        assert tf.extractfile("srv/hello.txt").read() == b"hello from the context\n"  # type: ignore[union-attr]
        assert {m.uname for m in tf.getmembers()} == {""}


def test_tar_times_are_the_layers_whole_seconds(context_of, pybuild, tmp_path: Path) -> None:
    """A file time with a fraction of a second is cut to the second it falls in, before
    1970 as after (as its layer has it), not toward 1970."""
    ctx = context_of("docker-run")
    for name, ns in (("old.txt", -1_000_000_000 * 10**9 + 123_456_789),
                     ("new.txt", 1_700_000_000 * 10**9 + 987_654_321)):
        (ctx / name).write_text(name)
        os.utime(ctx / name, ns=(ns, ns))
    (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text() + "COPY *.txt /t/\n")
    pybuild("-o", f"type=tar,dest={tmp_path / 'fs.tar'}", str(ctx)).digest
    with tarfile.open(tmp_path / "fs.tar") as tf:
        assert tf.getmember("t/old.txt").mtime == -1_000_000_000  # 1938-04-24 22:13:20
        assert tf.getmember("t/new.txt").mtime == 1_700_000_000


def test_bad_output_is_a_usage_error_before_building(context_of, pybuild) -> None:
    built = pybuild("-o", "type=oci,dest=x.tar,oci-mediatypes=true",
                    str(context_of("docker-run")))
    assert built.returncode == 2 and "Traceback" not in built.stderr
    assert "type=oci does not take oci-mediatypes=true" in built.stderr


def test_archive_to_a_directory_leaves_it_alone(context_of, pybuild, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    ctx = context_of("docker-run")
    built = pybuild("-o", f"type=oci,dest={tmp_path / 'taken'}", str(ctx))
    assert built.returncode == 2 and "Traceback" not in built.stderr
    assert "is a directory: give a file name for the archive (or tar=false" in built.stderr
    assert list((tmp_path / "taken").iterdir()) == []
    missing = pybuild("-o", f"type=docker,dest={tmp_path / 'no' / 'x.tar'}", str(ctx))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"{tmp_path / 'no'} is not a directory; create it first" in missing.stderr


def test_failed_export_leaves_no_file(context_of, pybuild, tmp_path: Path) -> None:
    """The archive does not fit on its filesystem: one error line, and nothing at dest
    (the temporary file is removed too)."""
    with small_filesystem(tmp_path / "small", "64k") as small:
        built = pybuild("-o", f"type=oci,dest={small / 'img.tar'}",
                        str(context_of("docker-run")))
        assert built.returncode == 1 and "Traceback" not in built.stderr
        errors = [line for line in built.stderr.splitlines() if "ERROR" in line]
        assert errors == [f"ERROR: cannot write {small / 'img.tar'}: no space left on device; "
                          "choose a destination on a writable file system with free space"]
        assert list(small.iterdir()) == []


def test_engine_refusing_an_archive_is_one_clear_error(engine: DockerEngine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the engine says about an archive it cannot load comes back as one line."""
    import asyncio

    from builder.engine import EngineError, load_image

    async def garbage() -> AsyncIterator[bytes]:
        yield b"this is not a tar archive" * 100

    monkeypatch.setenv("DOCKER_HOST", engine.host)
    with pytest.raises(EngineError) as info:
        asyncio.run(load_image(garbage()))
    message = str(info.value)
    assert message.startswith(f"the Docker engine at {engine.host} ")
    assert "\n" not in message


def test_docker_archive_on_stdout_pipes_into_docker_load(context_of, pybuild,
                                                         engine: DockerEngine,
                                                         image_name: str) -> None:
    from testkit.docker_engine import docker_client

    built = pybuild("-t", image_name, "-o", "type=docker,dest=-", str(context_of("docker-run")))
    assert built.returncode == 0, built.stderr
    load = subprocess.run([docker_client("run"), "load"], input=built.stdout, env=engine.env,
                          capture_output=True, timeout=120, check=False)
    assert load.returncode == 0, load.stderr
    assert f"Loaded image: {image_name}" in load.stdout.decode()
    assert engine.run_container(image_name) == EXPECTED_RUN
