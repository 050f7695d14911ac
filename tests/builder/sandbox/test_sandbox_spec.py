"""RunSpec validation, and the sandbox mounts that ``--mount`` values become (read by the
Dockerfile front end's parser, whose refusals ``tests/builder/testfiles-negative`` holds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import sandbox
from builder.dockerfile.mounts import Mount as MountFlag
from builder.dockerfile.mounts import MountType, parse_mount
from builder.sandbox import (
    BindMount,
    CacheMount,
    InvalidMount,
    RunSpec,
    SecretMount,
    Sharing,
    SshMount,
    TmpfsMount,
    sandbox_mount,
)
from tests.helpers.sandbox_steps import run_mount


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("type=cache,target=/root/.cache",
         CacheMount("/root/.cache")),
        ("type=cache,target=/c,id=pip,sharing=locked,ro,uid=1000,gid=50,mode=0700",
         CacheMount("/c", "pip", Sharing.LOCKED, True, 1000, 50, 0o700,
                    base="uid=1000,gid=50,mode=0700")),
        ("type=cache,target=/c,from=deps,source=out/,uid=1000",
         CacheMount("/c", uid=1000, source="/out", from_ref="deps")),
        ("type=cache,dst=var/cache/apt,sharing=private,readonly=false",
         CacheMount("/var/cache/apt", "var/cache/apt", sharing=Sharing.PRIVATE)),
        ("target=/src",
         BindMount("/src")),
        ("type=bind,source=app/,target=/app,from=builder,rw",
         BindMount("/app", "/app", "builder", None, True)),
        ("type=bind,src=x,dst=/x,readwrite=true",
         BindMount("/x", "/x", rw=True)),
        ("type=secret,id=aws",
         SecretMount("aws")),
        ("type=secret,target=/root/.npmrc",
         SecretMount(".npmrc", "/root/.npmrc")),
        ("type=secret,id=tok,env=TOKEN,required=true,mode=0440,uid=1,gid=2",
         SecretMount("tok", None, "TOKEN", True, 0o440, 1, 2)),
        ('"type=tmpfs","target=/t","size=64m"',
         TmpfsMount("/t", 64 * 1024 * 1024)),
        ("type=tmpfs,target=/t,size=1024",
         TmpfsMount("/t", 1024)),
    ],
)
def test_sandbox_mount(text: str, expected: object) -> None:
    assert run_mount(text) == expected


def test_secret_targets() -> None:
    assert run_mount("type=secret,id=a").file_target == "/run/secrets/a"  # type: ignore[union-attr]
    assert run_mount("type=secret,id=a,env=A").file_target is None  # type: ignore[union-attr]
    both = run_mount("type=secret,id=a,env=A,target=/a")
    assert both.file_target == "/a"  # type: ignore[union-attr]


def test_ssh_mounts() -> None:
    assert run_mount("type=ssh") == SshMount()
    assert run_mount("type=ssh,id=deploy,target=/a.sock,mode=0644,uid=1,gid=2,required") \
        == SshMount(id="deploy", target="/a.sock", required=True, mode=0o644, uid=1, gid=2)


def test_a_type_the_sandbox_does_not_run_is_refused() -> None:
    flag = MountFlag(type="volume", target="/v")  # type: ignore[arg-type]
    with pytest.raises(InvalidMount, match="type=volume") as info:
        sandbox_mount(flag)
    assert "docs.docker.com" in str(info.value)
    assert sandbox_mount(MountFlag(type=MountType.TMPFS, target="t")) == TmpfsMount("/t")


def test_runspec_validates_and_freezes(tmp_path: Path) -> None:
    spec = RunSpec(argv=["/bin/sh", "-c", "true"], env=["A=1"],  # type: ignore[arg-type]
                   secrets={"s": str(tmp_path)})  # type: ignore[dict-item]
    assert spec.argv == ("/bin/sh", "-c", "true") and spec.env == ("A=1",)
    assert spec.secrets == {"s": tmp_path}
    with pytest.raises(AttributeError):
        spec.user = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="empty"):
        RunSpec(argv=())
    with pytest.raises(ValueError, match="absolute"):
        RunSpec(argv=("x",), workdir="rel")
    with pytest.raises(ValueError, match="NAME=value"):
        RunSpec(argv=("x",), env=("NOEQUALS",))


def test_package_exports_match_all() -> None:
    for name in sandbox.__all__:
        assert hasattr(sandbox, name), name
    public = {n for n in dir(sandbox) if not n.startswith("_") and n[0].isupper()}
    assert public - set(sandbox.__all__) <= {"Path"}


def test_relative_targets_are_in_the_workdir_as_buildkit_mounts_them() -> None:
    """Bind, cache and tmpfs targets are in the step's working directory; a cache's id
    defaults to the target as written (cleaned); secret and ssh targets are in /."""
    def mount(text: str) -> object:
        flag = parse_mount(text)
        assert flag is not None
        return sandbox_mount(flag, "/srv/app")

    assert mount("type=bind,target=src") == BindMount("/srv/app/src")
    assert mount("type=bind,target=../lib/,source=lib") == BindMount("/srv/lib", "/lib")
    assert mount("type=cache,target=./.cache/") == CacheMount("/srv/app/.cache", ".cache")
    assert mount("type=cache,target=/abs") == CacheMount("/abs")
    assert mount("type=cache,target=c,id=mine") == CacheMount("/srv/app/c", "mine")
    assert mount("type=tmpfs,target=t") == TmpfsMount("/srv/app/t")
    assert mount("type=secret,id=s,target=s.txt") == SecretMount("s", "/s.txt")
    assert mount("type=ssh,target=agent.sock") == SshMount(target="/agent.sock")
