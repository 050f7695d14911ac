"""``--platform linux/amd64,linux/arm64``: one image per platform in an OCI index, RUN
steps of a foreign platform under qemu-user-static (binfmt_misc), and stages that do not
depend on the target built once.

The base is an index of a real amd64 busybox (the host's) and a real arm64 one (Debian's
busybox-static:arm64, downloaded once per session), so ``uname -m`` says which machine
a step or a container ran as.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from registry.oci import Platform
from testkit.docker_engine import DockerEngine
from testkit.emulation import ensure_emulator, foreign_busybox
from testkit.images import make_image, make_layer, tar_directory, write_oci_index_layout
from testkit.registries import get_manifest, pybuild_registry
from testkit.rootfs import busybox_path, make_busybox_rootfs
from tests.helpers.contexts import context_with_base

TESTFILES = Path(__file__).parent / "testfiles" / "multiplatform"
PLATFORMS = "linux/amd64,linux/arm64"

pytestmark = pytest.mark.skipif(Platform.host().architecture != "amd64",
                                reason="the foreign platform of these tests is arm64")


@pytest.fixture(scope="session")
def multiarch_ref(busybox_ref: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout whose tag ``latest`` is an index of busybox for amd64 and arm64."""
    ensure_emulator("arm64")
    base = tmp_path_factory.mktemp("multiarch")
    arm64 = foreign_busybox("arm64", base / "debs")
    images = {}
    for plat, busybox in (("linux/amd64", None), ("linux/arm64", arm64)):
        arch = plat.split("/")[1]
        rootfs = make_busybox_rootfs(base / f"rootfs-{arch}", busybox,
                                     applets_of=busybox_path())
        layer = make_layer(tar_directory(rootfs))
        images[plat] = make_image([layer], cmd=("sh",), architecture=arch,
                                  created_by=[f"busybox rootfs ({arch})"])
    return f"oci-layout://{write_oci_index_layout(images, base / 'layout')}:latest"


def _context(tmp_path: Path, ref: str) -> Path:
    return context_with_base(TESTFILES, tmp_path, ref)


def _cli(*args: str, storage: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["python3", "-m", "builder", *args], capture_output=True, text=True,
                          env={**os.environ, "PYBUILD_STORAGE": str(storage), **env},
                          timeout=900, check=False)


def test_two_platforms_make_an_index_and_share_the_build_stage(
        multiarch_ref: str, build, tmp_path: Path) -> None:
    ctx = _context(tmp_path, multiarch_ref)
    out, layout = tmp_path / "out", tmp_path / "oci"
    result = build(ctx, local=out, oci=layout, platform=PLATFORMS)
    assert result.index is not None
    entries = result.index.index.manifests
    assert [str(e.platform) for e in entries] == ["linux/amd64", "linux/arm64"]
    assert [e.digest for e in entries] == [i.digest for i in result.index.images]
    assert [i.config.architecture for i in result.index.images] == ["amd64", "arm64"]
    # the RUN of the target stage ran under each platform (arm64: under qemu)
    for plat, machine in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
        assert (out / plat / "uname").read_text() == f"{machine}\n"
        assert (out / plat / "arch").read_text() == f"{plat.split('_')[1]}\n"
        # the build stage ran natively, for both targets
        assert (out / plat / "built-on").read_text() == "built on amd64\n"
    # ... and once: the same expanded instruction on the same base is one step
    tools_runs = [n for n in result.ran_steps if "built on" in n]
    assert len(tools_runs) == 1, result.ran_steps
    assert any("built on" in n for n in result.cached_steps), result.cached_steps
    assert sum("uname -m > /uname" in n for n in result.ran_steps) == 2
    # type=oci: index.json names the image index, which lists both manifests
    top = json.loads((layout / "index.json").read_text())["manifests"]
    assert [m["mediaType"] for m in top] == ["application/vnd.oci.image.index.v1+json"]
    assert top[0]["digest"] == str(result.index.digest)
    index = json.loads((layout / "blobs/sha256" / top[0]["digest"][7:]).read_bytes())
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for m in index["manifests"]:
        manifest = json.loads((layout / "blobs/sha256" / m["digest"][7:]).read_bytes())
        for d in [manifest["config"], *manifest["layers"]]:
            assert (layout / "blobs/sha256" / d["digest"][7:]).is_file()
    # a rebuild runs nothing and makes the same index
    again = build(ctx, platform=PLATFORMS)
    assert not [n for n in again.ran_steps if "RUN" in n or "COPY" in n], again.ran_steps
    assert again.index is not None and again.index.digest == result.index.digest
    # one platform keeps making a plain manifest
    single = build(ctx, platform="linux/arm64")
    assert single.index is None
    assert single.image.digest == result.index.images[1].digest


def test_one_platform_archives_refuse_an_index(multiarch_ref: str, build,
                                               tmp_path: Path) -> None:
    ctx = _context(tmp_path, multiarch_ref)
    with pytest.raises(BuildError, match=r"--platform: linux/amd64,linux/arm64: a Docker "
                                         r"engine .* hold one platform's image"):
        build(ctx, docker=tmp_path / "image.tar", platform=PLATFORMS)
    assert not (tmp_path / "image.tar").exists()


def test_pushed_index_runs_in_docker_as_each_platform(multiarch_ref: str, docker_engine: DockerEngine,
                                                      tmp_path: Path) -> None:
    engine = docker_engine
    ctx = _context(tmp_path, multiarch_ref)
    with pybuild_registry(tmp_path / "registry") as registry:
        ref = registry.ref("test/multiplatform", "v1")
        built = _cli("build", "--progress", "plain", "--platform", PLATFORMS, "-t", ref,
                     "--push", str(ctx), storage=tmp_path / "storage")
        assert built.returncode == 0, built.stderr
        digest = built.stdout.strip()
        assert "[linux/arm64 stage-1 3/3] RUN uname -m" in built.stderr, built.stderr
        got = get_manifest(registry.addr, "test/multiplatform", "v1")
        assert got.status == 200
        index = json.loads(got.body)
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        assert "sha256:" + hashlib.sha256(got.body).hexdigest() == digest
        assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == \
            ["amd64", "arm64"]
        pulled = []  # image ids: a pull for another platform takes the tag away
        try:
            for plat, machine in (("linux/arm64", "aarch64"), ("linux/amd64", "x86_64")):
                engine.run("pull", "--platform", plat, ref)
                pulled.append(engine.run("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip())
                ran = engine.run("run", "--rm", "--network", "none", "--platform", plat, ref)
                assert ran.stdout.strip() == machine
                uname = engine.run("run", "--rm", "--network", "none", "--platform", plat,
                                   ref, "cat", "/uname")
                assert uname.stdout.strip() == machine
        finally:
            engine.run("rmi", "-f", ref, *pulled, check=False)


def test_a_missing_emulator_is_one_clear_line(multiarch_ref: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, multiarch_ref)
    empty = tmp_path / "binfmt_misc"  # binfmt_misc without entries
    empty.mkdir()
    (empty / "status").write_text("enabled\n")
    failed = _cli("build", "--progress", "quiet", "--platform", "linux/arm64", "-f",
                  str(ctx / "Dockerfile.run"), str(ctx), storage=tmp_path / "storage",
                  PYBUILD_BINFMT_MISC=str(empty))
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith("ERROR: Dockerfile.run:2: RUN: no emulator for linux/arm64 "
                               f"is registered with binfmt_misc ({empty})")
    assert "apt-get install qemu-user-static" in lines[0]
    assert "update-binfmts --enable qemu-aarch64" in lines[0]
    # in a multi-platform build the failing platform stops the others: still one line
    both = _cli("build", "--progress", "quiet", "--platform", PLATFORMS, "-f",
                str(ctx / "Dockerfile.run"), str(ctx), storage=tmp_path / "storage",
                PYBUILD_BINFMT_MISC=str(empty))
    assert both.returncode == 1
    assert both.stderr.strip().splitlines() == lines, both.stderr
    # the host platform needs no emulator
    native = _cli("build", "--progress", "quiet", "-f", str(ctx / "Dockerfile.run"),
                  str(ctx), storage=tmp_path / "storage", PYBUILD_BINFMT_MISC=str(empty))
    assert native.returncode == 0, native.stderr


def test_an_entry_without_the_fix_binary_flag_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.sandbox.emulation import EmulatorMissing, check_emulator, find_emulator

    where = tmp_path / "binfmt_misc"
    where.mkdir()
    (where / "status").write_text("enabled\n")
    (where / "qemu-aarch64").write_text(
        "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: P\noffset 0\n"
        "magic 7f454c460201010000000000000000000200b700\n"
        "mask ffffffffffffff00fffffffffffffffffeffffff\n")
    monkeypatch.setenv("PYBUILD_BINFMT_MISC", str(where))
    assert find_emulator("arm64") is not None  # found by what it matches
    assert find_emulator("s390x") is None
    with pytest.raises(EmulatorMissing, match="without the F .fix binary. flag"):
        check_emulator("linux/arm64", "arm64")
    (where / "status").write_text("disabled\n")
    assert find_emulator("arm64") is None


def test_platforms_build_at_the_same_time(multiarch_ref: str, build, tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two platforms run at once only with two cores")
    ctx = _context(tmp_path, multiarch_ref)
    result = build(ctx, dockerfile=ctx / "Dockerfile.meet", platform=PLATFORMS)
    assert result.index is not None and len(result.index.images) == 2


def test_a_registry_index_gives_each_platform_its_base(multiarch_ref: str,
                                                       tmp_path: Path) -> None:
    layout = multiarch_ref[len("oci-layout://"):].rsplit(":", 1)[0]
    with pybuild_registry(tmp_path / "registry") as registry:
        base = registry.ref("test/busybox", "multi")
        copied = _cli("copy", "--all-platforms", f"oci:{layout}:latest", base,
                      storage=tmp_path / "seed")
        assert copied.returncode == 0, copied.stderr
        ctx = _context(tmp_path, base)
        out = tmp_path / "out"
        for attempt in ("pulled", "again"):
            built = _cli("build", "--progress", "plain", "--platform", PLATFORMS, "-o",
                         f"type=local,dest={out}-{attempt}", str(ctx),
                         storage=tmp_path / "storage")
            assert built.returncode == 0, built.stderr
            for plat, machine in (("linux_amd64", "x86_64"), ("linux_arm64", "aarch64")):
                assert (Path(f"{out}-{attempt}") / plat / "uname").read_text() == \
                    f"{machine}\n"


def test_index_annotations_of_a_multi_platform_build(multiarch_ref: str, tmp_path: Path) -> None:
    """As buildx: ``index:`` goes into the image index, ``index-descriptor:`` onto its entry
    in index.json, ``manifest-descriptor:`` onto each platform's entry in the index."""
    ctx = _context(tmp_path, multiarch_ref)
    layout = tmp_path / "oci"
    built = _cli("build", "--progress", "quiet", "--platform", PLATFORMS,
                 "-f", str(ctx / "Dockerfile.meet"),
                 "--annotation", "index:org.opencontainers.image.title=app",
                 "--annotation", "index-descriptor:com.example.top=1",
                 "--annotation", "manifest-descriptor:com.example.entry=2",
                 "--annotation", "manifest[linux/arm64]:com.example.arm=3",
                 "--annotation", "index[linux/arm64]:com.example.nowhere=4",
                 "-o", f"type=oci,dest={layout},tar=false", str(ctx),
                 storage=tmp_path / "storage")
    assert built.returncode == 0, built.stderr
    top = json.loads((layout / "index.json").read_text())["manifests"]
    assert top[0]["annotations"] == {"com.example.top": "1"}
    assert top[0]["digest"] == built.stdout.strip()
    index = json.loads((layout / "blobs/sha256" / top[0]["digest"][7:]).read_bytes())
    assert index["annotations"] == {"org.opencontainers.image.title": "app"}
    assert [m["annotations"] for m in index["manifests"]] == [{"com.example.entry": "2"}] * 2
    manifests = [json.loads((layout / "blobs/sha256" / m["digest"][7:]).read_bytes())
                 for m in index["manifests"]]
    assert [m.get("annotations") for m in manifests] == [None, {"com.example.arm": "3"}]
    # one platform writes no index: refused there, as BuildKit refuses it
    single = _cli("build", "--progress", "quiet", "--platform", "linux/arm64",
                  "--annotation", "index:a=b", str(ctx), storage=tmp_path / "storage")
    assert single.returncode == 2
    assert "index annotations not supported for single platform export" in single.stderr


def test_a_failing_platform_is_named(multiarch_ref: str, tmp_path: Path) -> None:
    """As BuildKit's ``[linux/arm64 2/2] RUN ...``: with -q the error line is all there is,
    and it says which platform failed."""
    ctx = _context(tmp_path, multiarch_ref)
    failed = _cli("build", "-q", "--platform", PLATFORMS, "-t", "example.com/fail:1", "-f",
                  str(ctx / "Dockerfile.fail"), str(ctx), storage=tmp_path / "storage")
    assert failed.returncode == 1
    first = failed.stderr.splitlines()[0]
    assert first.startswith("ERROR: [linux/arm64] Dockerfile.fail:4: RUN: "), failed.stderr
    assert "exit code 3" in first and "no arm64 build" in failed.stderr
    assert "example.com/fail" not in _cli("images", storage=tmp_path / "storage").stdout


def test_platform_split_of_local_and_tar_outputs(multiarch_ref: str, tmp_path: Path) -> None:
    """buildx's ``platform-split``: false merges the platforms' files into one directory
    (a path two platforms hold fails, as BuildKit's); true gives one platform its own."""
    ctx = _context(tmp_path, multiarch_ref)
    split = str(ctx / "Dockerfile.split")

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli("build", "--progress", "quiet", *args, str(ctx),
                    storage=tmp_path / "storage")

    merged, archive = tmp_path / "merged", tmp_path / "merged.tar"
    done = build("--platform", PLATFORMS, "-f", split,
                 "-o", f"type=local,dest={merged},platform-split=false",
                 "-o", f"type=tar,dest={archive},platform-split=false")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (merged / "bin").iterdir()) == ["app-amd64", "app-arm64"]
    assert (merged / "bin/app-arm64").read_text() == "app for arm64\n"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["bin", "bin/app-amd64", "bin/app-arm64"]
    one = tmp_path / "one"
    done = build("--platform", "linux/arm64", "-f", split,
                 "-o", f"type=local,dest={one},platform-split=true")
    assert done.returncode == 0, done.stderr
    assert [p.name for p in one.iterdir()] == ["linux_arm64"]
    assert (one / "linux_arm64/bin/app-arm64").is_file()
    clash = tmp_path / "clash"
    failed = build("--platform", PLATFORMS, "-f", str(ctx / "Dockerfile.run"),
                   "-o", f"type=local,dest={clash},platform-split=false")
    assert failed.returncode == 1
    assert "platform-split=false: cannot overwrite /" in failed.stderr
    assert "from linux/amd64 with linux/arm64" in failed.stderr
    assert not clash.exists()
