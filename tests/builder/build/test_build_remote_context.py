"""A context that is no directory: ``pybuild build -`` (a tar, or the Dockerfile alone, on
stdin), an http URL (a tar, or a Dockerfile) and a git URL (``#REF:SUBDIR``), as ``docker
build`` takes them; each makes the same image as the directory it holds."""

from __future__ import annotations

import gzip
import io
import json
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.helpers.git_server import commit, serving_git
from tests.helpers.http_server import serve_directory


def _tar_of(ctx: Path, compress: str = "") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(ctx.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(ctx)), recursive=False)
    data = raw.getvalue()
    if compress == "gzip":
        return gzip.compress(data)
    if compress == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def _build_stdin(tmp_path: Path, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "s"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["python3", "-m", "builder", "build", "-q", *args, "-"], input=stdin,
                          capture_output=True, env=env, timeout=300, check=False)


def test_the_context_as_a_tar_on_stdin(context_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``docker build - < context.tar[.gz|.zst]``: the same image as from the directory."""
    ctx = context_of("buildx-flags")
    from_dir = subprocess.run(["python3", "-m", "builder", "build", "-q", "--storage",
                               str(tmp_path / "s"), "-f", str(ctx / "stdin.Dockerfile"), str(ctx)],
                              capture_output=True, text=True, timeout=300, check=False)
    assert from_dir.returncode == 0, from_dir.stderr
    for compress in ("", "gzip", "zstd"):
        # -f names a Dockerfile inside the archive
        piped = _build_stdin(tmp_path, _tar_of(ctx, compress), "-f", "stdin.Dockerfile")
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout.decode() == from_dir.stdout, compress
    out = _build_stdin(tmp_path, _tar_of(ctx), "-f", "stdin.Dockerfile", "-o", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    listing = (tmp_path / "out" / "listing.txt").read_text().split()
    assert "kept.txt" in listing and "ignored.txt" not in listing  # .dockerignore applies
    assert list((tmp_path / "tmp").iterdir()) == []  # the unpacked context is gone


def test_a_dockerfile_on_stdin_builds_with_an_empty_context(context_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = (context_of("buildx-flags") / "stdin.Dockerfile").read_text().splitlines()[0]
    built = _build_stdin(tmp_path, f"{base}\nRUN echo hi > /x\n".encode())
    assert built.returncode == 0, built.stderr
    assert built.stdout.decode().startswith("sha256:")
    copying = _build_stdin(tmp_path, f"{base}\nCOPY kept.txt /\n".encode())
    assert copying.returncode == 1 and b"'kept.txt' not found in the build context" in copying.stderr
    both = _build_stdin(tmp_path, b"FROM scratch\n", "-f", "-")
    assert both.returncode == 2 and b"cannot be both the context" in both.stderr
    junk = _build_stdin(tmp_path, bytes(range(256)) * 8)
    assert junk.returncode == 2 and b"neither a Dockerfile" in junk.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_context_archive_that_climbs_out_is_refused(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, body in (("Dockerfile", b"FROM scratch\n"), ("../escaped", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    refused = _build_stdin(tmp_path, raw.getvalue())
    assert refused.returncode == 2 and b"is refused" in refused.stderr, refused.stderr
    assert b"Traceback" not in refused.stderr
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "tmp" / "escaped").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def _build(tmp_path: Path, context: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "s"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["python3", "-m", "builder", "build", "-q", *args, context],
                          capture_output=True, env=env, timeout=300, check=False)


def test_the_context_from_an_http_url(context_of, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = context_of("buildx-flags")
    from_dir = _build(tmp_path, str(ctx), "-f", str(ctx / "stdin.Dockerfile"))
    assert from_dir.returncode == 0, from_dir.stderr
    served = tmp_path / "served"
    served.mkdir()
    (served / "ctx.tar.gz").write_bytes(_tar_of(ctx, "gzip"))
    (served / "Dockerfile").write_text((ctx / "stdin.Dockerfile").read_text().splitlines()[0] + "\n")
    with serve_directory(served) as url:
        got = _build(tmp_path, f"{url}/ctx.tar.gz", "-f", "stdin.Dockerfile")
        assert got.returncode == 0, got.stderr
        assert got.stdout == from_dir.stdout
        # a URL naming a Dockerfile: an empty context
        alone = _build(tmp_path, f"{url}/Dockerfile")
        assert alone.returncode == 0, alone.stderr
        missing = _build(tmp_path, f"{url}/nothing.tar")
        assert missing.returncode == 2 and b"the server answered 404" in missing.stderr
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = _build(tmp_path, f"http://127.0.0.1:{port}/ctx.tar")
    assert refused.returncode == 2 and b"cannot download" in refused.stderr
    assert b"Traceback" not in refused.stderr + missing.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.fixture
def git_daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``git daemon`` on a free loopback port, serving ``tmp_path/git``: its URL and root."""
    root = tmp_path / "git"
    root.mkdir()
    with serving_git(root) as url:
        yield url, root


_commit = commit


def test_the_context_from_a_git_url(context_of, git_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, root = git_daemon
    ctx = context_of("buildx-flags")
    base = (ctx / "stdin.Dockerfile").read_text().splitlines()[0]
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "app").mkdir()
    (work / "Dockerfile").write_text(f"{base}\nRUN true\n")
    (work / "app" / "Dockerfile").write_text(f"{base}\nCOPY . /app/\n")
    (work / "app" / "hello.txt").write_text("one\n")
    first = _commit(work, "one")
    subprocess.run(["git", "-C", str(work), "tag", "v1"], check=True)
    (work / "app" / "hello.txt").write_text("two\n")
    _commit(work, "two")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)

    def hello(ref: str) -> str:
        out = tmp_path / f"out-{ref.replace(':', '_')}"
        got = _build(tmp_path, f"{url}/repo.git#{ref}", "-o", str(out))
        assert got.returncode == 0, got.stderr
        assert not (out / "app" / ".git").exists()  # no .git in the context, as BuildKit
        return (out / "app" / "hello.txt").read_text()

    assert hello("main:app") == "two\n"
    assert hello("v1:app") == "one\n"
    assert hello(f"{first}:app") == "one\n"
    top = _build(tmp_path, f"{url}/repo.git")
    assert top.returncode == 0, top.stderr
    for ref, message in (("nobranch", b"couldn't find remote ref"),
                         ("main:nodir", b"'nodir' is not a directory of the repository"),
                         ("main:../..", b"is not a directory of the repository")):
        bad = _build(tmp_path, f"{url}/repo.git#{ref}")
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_git_context_is_the_same_under_any_umask(context_of, git_daemon,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    """A git context's files are 0644 or 0755 with the commit's time, as ADD of a
    repository gives them and BuildKit's git source does: the same commit makes the same
    image whatever the umask of the host (002 gives group-writable checkouts) or the time
    of the checkout."""
    url, root = git_daemon
    base = (context_of("buildx-flags") / "stdin.Dockerfile").read_text().splitlines()[0]
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "app").mkdir()
    (work / "app" / "hello.txt").write_text("hello\n")
    (work / "Dockerfile").write_text(f"{base}\nCOPY app /srv/app\n")
    _commit(work, "one", when="2020-01-01T00:00:00Z")
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)

    def build(umask: int, epoch: int) -> tuple[bytes, dict[str, tuple[int, int]]]:
        layout = tmp_path / f"oci-{umask:o}-{epoch}"
        got = subprocess.run(["python3", "-m", "builder", "build", "-q", "--storage",
                              str(tmp_path / f"s-{umask:o}-{epoch}"), "--source-date-epoch",
                              str(epoch), "-o", f"type=oci,dest={layout},tar=false",
                              f"{url}/repo.git"],
                             capture_output=True, env=env, timeout=300, check=False, umask=umask)
        assert got.returncode == 0, got.stderr
        manifest = json.loads((layout / "index.json").read_text())
        while "layers" not in manifest:  # index.json, then the image's manifest
            manifest = json.loads((layout / "blobs/sha256" / manifest["manifests"][0]["digest"]
                                   .removeprefix("sha256:")).read_bytes())
        layer = layout / "blobs/sha256" / manifest["layers"][-1]["digest"].removeprefix("sha256:")
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.read_bytes()))) as tar:
            return got.stdout.strip(), {m.name: (m.mode, int(m.mtime)) for m in tar.getmembers()}

    committed = 1577836800
    (a, _), (b, entries) = build(0o022, committed), build(0o002, committed)
    assert entries["srv/app/hello.txt"] == (0o644, committed)
    assert a == b
    # an epoch later than the checkout clamps nothing: the files keep the commit's time
    _, entries = build(0o022, 2000000000)
    assert entries["srv/app/hello.txt"] == (0o644, committed)


def test_a_local_directory_named_like_a_git_url_is_the_context(tmp_path: Path) -> None:
    # As the docker CLI, a directory wins over the URL forms: in a GOPATH-style tree,
    # `docker build github.com/me/app` builds that directory, it clones nothing.
    app = tmp_path / "src" / "github.com" / "me" / "app"
    app.mkdir(parents=True)
    (app / "Dockerfile").write_text("FROM scratch\nCOPY hello /\n")
    (app / "hello").write_text("hi\n")
    done = subprocess.run(["python3", "-m", "builder", "build", "-q", "--storage",
                           str(tmp_path / "s"), "-o", f"type=local,dest={tmp_path / 'out'}",
                           "github.com/me/app"], cwd=tmp_path / "src", capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "hello").read_text() == "hi\n"
