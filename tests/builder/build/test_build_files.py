"""COPY/ADD details (chown by name, chmod, wildcards, --exclude, archives, URLs), config
instructions, ONBUILD, secrets and cache mounts, and the CLI's plain progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from tests.builder.build.conftest import write_base_layout
from tests.helpers.http_server import serve_answers


@pytest.fixture
def http_server() -> Iterator[int]:
    """A local HTTP server on 127.0.0.1 serving /remote.txt, in a thread."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return 200 if path == "/remote.txt" else 404, {}, b"remote content\n"

    with serve_answers(answer) as url:
        yield int(url.rsplit(":", 1)[1])


def test_copy_add_details_and_config(context_of, build, tmp_path: Path, http_server: int) -> None:
    out = tmp_path / "out"
    files = context_of("files")
    result = build(files, local=out, build_args={"PORT": str(http_server)})
    owned = out / "home/tester/owned.txt"
    st = owned.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 50, 0o640)
    assert (out / "etc/app/a.cfg").stat().st_uid == 1000
    assert (out / "etc/app/b.cfg").read_text() == "b\n"
    assert (out / "tree/sub/keep.txt").exists() and not (out / "tree/sub/x.skip").exists()
    assert (out / "unpacked/pkg/file.txt").read_text() == "inside\n"
    assert (out / "unpacked-xz/pkg/file.txt").read_text() == "inside\n"
    assert (out / "downloads/remote.txt").read_text() == "remote content\n"
    cfg = result.image.config.config
    assert cfg.entrypoint == ("/bin/sh", "-e", "-c", "echo hi")
    assert cfg.cmd is None  # ENTRYPOINT resets the base's CMD
    assert cfg.healthcheck == {"Test": ["CMD-SHELL", "wget -q localhost || exit 1"],
                               "Interval": 30_000_000_000, "Retries": 2}
    assert cfg.stop_signal == "SIGTERM" and cfg.volumes == {"/data": {}}
    assert cfg.on_build == ("RUN echo triggered > /onbuild.txt",)

    # the image as a base: its ONBUILD trigger runs, and is not inherited further
    layout = tmp_path / "layout"
    build(files, oci=layout, build_args={"PORT": str(http_server)})
    ctx = tmp_path / "child"
    ctx.mkdir()
    tag = json.loads((layout / "index.json").read_text())["manifests"][0]
    assert tag
    (ctx / "Dockerfile").write_text(f"FROM oci-layout://{layout}\nRUN test -f /onbuild.txt\n")
    child = build(ctx, local=tmp_path / "child-out")
    assert (tmp_path / "child-out/onbuild.txt").read_text() == "triggered\n"
    assert child.image.config.config.on_build is None


def test_secret_cache_mount_and_network(context_of, build, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    out = tmp_path / "out"
    storage = tmp_path / "s"
    result = build(context_of("secret"), local=out, storage=storage, secrets={"token": secret})
    assert (out / "seen.txt").read_text().strip() == "6"
    assert not (out / "run/secrets/token").exists()
    assert (out / "count.txt").read_text().strip() == "1"
    assert (out / "links.txt").read_text().strip() == "1"  # only lo
    assert not (out / "cache").exists() or not any((out / "cache").iterdir())
    # the secret's value is in no layer blob
    for blob in (storage).rglob("*"):
        if blob.is_file() and blob.stat().st_size < 50_000_000:
            assert b"s3cret" not in blob.read_bytes(), blob
    assert result.image.manifest.layers


def test_cli_plain_progress_cached_and_failure(context_of, tmp_path: Path) -> None:
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "storage")}
    ctx = context_of("basic")
    iid = tmp_path / "iid"
    meta = tmp_path / "meta.json"
    cmd = ["python3", "-m", "builder", "build", "--progress", "plain", "--iidfile", str(iid),
           "--metadata-file", str(meta), "--source-date-epoch", "0", str(ctx)]
    first = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "#2 [2/5] WORKDIR $APP_HOME" in first.stderr
    assert "hello from run" not in first.stderr or "#" in first.stderr
    digest = first.stdout.strip()
    assert digest.startswith("sha256:")
    assert json.loads(meta.read_text())["containerimage.digest"] == digest
    assert iid.read_text() == json.loads(meta.read_text())["containerimage.config.digest"]
    second = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert second.stderr.count("CACHED") == 4
    assert second.stdout.strip() == digest

    failing = context_of("failing-run")
    bad = subprocess.run(["python3", "-m", "builder", "build", "--progress", "plain",
                          "-t", "x/y:z", str(failing)], check=False, capture_output=True,
                         text=True,
                         env=env, timeout=300)
    assert bad.returncode == 1
    assert "exit code 3" in bad.stderr and "before-failure" in bad.stderr
    assert bad.stdout == ""
    images = subprocess.run(["python3", "-m", "builder", "images"], check=False,
                            capture_output=True, text=True, env=env, timeout=60)
    assert images.returncode == 0 and "x/y" not in images.stdout  # nothing tagged

    (ctx / "dir/a.txt").write_text("changed\n")
    explained = subprocess.run([*cmd[:-1], "--explain", str(ctx)], check=False,
                               capture_output=True, text=True, env=env, timeout=300)
    assert explained.returncode == 0, explained.stderr
    assert "cache miss: inputs changed: files:dir/a.txt" in explained.stderr
    assert explained.stderr.count("CACHED") == 2


def test_write_base_layout_is_importable() -> None:
    assert callable(write_base_layout)


def test_docker_parity_details(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    context = context_of("docker-parity")
    os.link(context / "pair/one.txt", context / "pair/one.hard")
    result = build(context, local=out, source_date_epoch=0)
    assert result.image.config.author == "Jane Doe <jane@example.com>"
    # WORKDIR creates missing directories as the stage's USER
    for made in ("srv/made", "srv/made/by-tester"):
        st = (out / made).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 50, 0o755)
    # leniently: an unknown user is root, an unknown group the user's own
    assert (out / "srv/unknown").stat().st_uid == 0
    assert ((out / "srv/uid").stat().st_uid, (out / "srv/uid").stat().st_gid) == (1000, 1000)
    # a directory copied into an existing directory leaves its mode and owner alone...
    st = (out / "etc").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    st = (out / "etc/app.conf").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o700)
    # ...and makes a new one 0755: --chmod is for what is copied into it
    assert (out / "locked").stat().st_mode & 0o7777 == 0o755
    assert (out / "locked/app.conf").stat().st_mode & 0o7777 == 0o700
    # two identical layers in a row still mount (overlayfs refuses a lowerdir twice)
    diff_ids = result.image.config.rootfs.diff_ids
    assert diff_ids[-5] == diff_ids[-4]
    assert (out / "ran.txt").read_text() == "ran\n"
    # files hard-linked in the context stay hard-linked within one source, not across two
    assert (out / "linked/one.txt").stat().st_ino == (out / "linked/one.hard").stat().st_ino
    assert (out / "separate/one.txt").stat().st_ino != (out / "separate/one.hard").stat().st_ino


def test_hard_links_in_the_context_are_part_of_the_cache_key(context_of, build,
                                                             tmp_path: Path) -> None:
    context = context_of("docker-parity")
    (context / "pair/one.hard").write_text("one\n")  # the same content, not linked
    storage = tmp_path / "storage"
    separate = build(context, storage=storage, source_date_epoch=0)
    (context / "pair/one.hard").unlink()
    os.link(context / "pair/one.txt", context / "pair/one.hard")
    linked = build(context, storage=storage, source_date_epoch=0)
    # COPY pair /linked/ keeps the link; COPY pair/one.txt pair/one.hard /separate/ does not
    before, after = separate.image.config.rootfs.diff_ids, linked.image.config.rootfs.diff_ids
    assert after[-2] != before[-2]
    assert after[-1] == before[-1]


def test_add_unpacks_only_tar_archives(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    context = context_of("add-archives")
    build(context, local=out)
    # a gzip file that holds no tar, and a text file named .tar: copied, not unpacked
    assert (out / "plain/data.json.gz").read_bytes() == (context / "data.json.gz").read_bytes()
    assert (out / "plain/notes.tar").read_text() == "a text file with a .tar name\n"
    # a v7 tar (no "ustar" magic) and a tar.gz: unpacked
    assert (out / "unpacked/v7.txt").read_text() == "from a v7 tar\n"
    assert (out / "unpacked/inner.txt").read_text() == "inside a tar.gz\n"
    assert sorted(p.name for p in (out / "unpacked").iterdir()) == ["inner.txt", "v7.txt"]
    # --chown: every unpacked entry and the directories the step creates are its owner's
    owned = [(out / p).stat() for p in ("owned/new/inner.txt", "owned/new", "owned")]
    assert [(st.st_uid, st.st_gid) for st in owned] == [(1000, 50)] * 3
    assert (out / "unpacked/inner.txt").stat().st_uid == 0  # the archive's own owner


def test_copy_of_a_wildcard_that_matches_nothing(context_of, build, tmp_path: Path,
                                                busybox_ref: str) -> None:
    out = tmp_path / "out"
    context = context_of("empty-wildcard")
    build(context, local=out)
    assert sorted(p.name for p in (out / "opt/app").iterdir()) == ["pom.xml"]
    assert not (out / "opt/jars").exists()
    # ...but the directory the wildcard is in must exist, and a plain path too
    for line in ("COPY nosuchdir/*.jar /opt/\n", "COPY nosuch.jar /opt/\n"):
        (context / "Dockerfile").write_text(f"FROM {busybox_ref}\n{line}")
        with pytest.raises(BuildError, match="not found in the build context"):
            build(context)


def test_onbuild_triggers_are_expanded_in_the_child(context_of, build, tmp_path: Path,
                                                    busybox_ref: str) -> None:
    context = context_of("onbuild")
    layout = tmp_path / "layout"
    build(context, oci=layout)
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref} AS helper\nRUN echo helped > /helper.txt\n"
        f"FROM oci-layout://{layout}\nRUN echo \"$FULL\" > full.txt\n")
    out = tmp_path / "out"
    child = build(context, local=out, build_args={"VERSION": "2.5"})
    assert (out / "app/a.txt").read_text() == "from the context\n"
    assert (out / "app/helper.txt").read_text() == "helped\n"
    assert (out / "app/w-2.5/full.txt").read_text() == "v2.5-a.txt\n"
    cfg = child.image.config.config
    assert cfg.working_dir == "/app/w-2.5" and cfg.on_build is None
    assert "FULL=v2.5-a.txt" in cfg.env


def test_chown_with_an_empty_part_or_root(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(context_of("chown-forms"), local=out)
    owners = {p: ((out / p).stat().st_uid, (out / p).stat().st_gid)
              for p in ("group-only", "user-colon", "colon-only", "root-staff",
                        "bare/own-root", "bare/own-root-root")}
    assert owners == {"group-only": (0, 50), "user-colon": (1000, 0), "colon-only": (0, 0),
                      "root-staff": (0, 50), "bare/own-root": (0, 0),
                      "bare/own-root-root": (0, 0)}


def test_copy_keeps_the_mtimes_of_directories_and_symlinks(build, tmp_path: Path,
                                                           busybox_ref: str) -> None:
    context = tmp_path / "ctx"
    (context / "tree/sub").mkdir(parents=True)
    (context / "tree/sub/file.txt").write_text("x\n")
    (context / "tree/link").symlink_to("sub/file.txt")
    (context / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY tree /copied/\n")
    times = {"tree/sub/file.txt": 1_500_000_000, "tree/link": 1_400_000_000,
             "tree/sub": 1_300_000_000}
    for rel, mtime in times.items():  # children first: a write changes its directory
        os.utime(context / rel, (mtime, mtime), follow_symlinks=False)
    out = tmp_path / "out"
    build(context, local=out)
    got = {rel: int(os.lstat(out / "copied" / rel.removeprefix("tree/")).st_mtime)
           for rel in times}
    assert got == times


@pytest.fixture
def http_files() -> Iterator[str]:
    """A local HTTP server on 127.0.0.1 with a file that has a Last-Modified date, one
    named with a space, a tar.gz (/files/app.tar.gz), and answers for a directory URL and
    the root; yields its URL."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        body = f"served for {path}\n".encode()
        if path == "/files/app.tar.gz":
            body = _tar_gz({"app/remote.txt": b"from a remote archive\n"})
        dated = {"Last-Modified": "Sun, 05 May 2019 10:00:00 GMT"}
        return 200, dated if path == "/files/dated.txt" else {}, body

    with serve_answers(answer) as url:
        yield url


def _tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_add_unpack_flag(build, tmp_path: Path, busybox_ref: str, http_files: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "local.tar.gz").write_bytes(_tar_gz({"local.txt": b"local\n"}))
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        f"ADD --unpack=true {http_files}/files/app.tar.gz /remote/\n"
        f"ADD {http_files}/files/app.tar.gz /remote-kept/\n"
        "ADD --unpack=false local.tar.gz /local-kept/\n"
        "ADD local.tar.gz /local/\n")
    out = tmp_path / "out"
    build(context, local=out)
    assert (out / "remote/app/remote.txt").read_text() == "from a remote archive\n"
    assert (out / "remote-kept/app.tar.gz").is_file()
    assert (out / "local-kept/local.tar.gz").read_bytes() == (context / "local.tar.gz").read_bytes()
    assert (out / "local/local.txt").read_text() == "local\n"


def test_add_of_urls_names_and_dates_the_files(build, tmp_path: Path, busybox_ref: str,
                                               http_files: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        + "".join(f"ADD {http_files}{path} /got/\n"
                  for path in ("/files/dated.txt", "/files/my%20file.txt", "/files/dir/", "/")))
    out = tmp_path / "out"
    build(context, local=out)
    got = {p.name: (p.read_text(), int(p.stat().st_mtime), p.stat().st_mode & 0o7777)
           for p in (out / "got").iterdir()}
    assert got == {
        "dated.txt": ("served for /files/dated.txt\n", 1557050400, 0o600),
        "my file.txt": ("served for /files/my%20file.txt\n", 0, 0o600),
        "dir": ("served for /files/dir/\n", 0, 0o600),
        "__unnamed__": ("served for /\n", 0, 0o600),
    }


def test_a_stage_from_a_stage_keeps_its_build_args_in_run(build, tmp_path: Path,
                                                          busybox_ref: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref} AS deps\nARG VERSION=1.0\nARG FROM_CLI\nRUN true\n"
        "FROM deps\nRUN echo \"$VERSION $FROM_CLI\" > /args.txt\n")
    out = tmp_path / "out"
    result = build(context, local=out, build_args={"FROM_CLI": "given"})
    assert (out / "args.txt").read_text() == "1.0 given\n"
    assert not any(e.startswith(("VERSION=", "FROM_CLI=")) for e in result.image.config.config.env)


def test_copy_chmod_symbolic(build, tmp_path: Path, busybox_ref: str) -> None:
    context = tmp_path / "ctx"
    (context / "app/bin").mkdir(parents=True)
    (context / "app/bin/run.sh").write_text("#!/bin/sh\n")
    (context / "app/notes.txt").write_text("notes\n")
    os.chmod(context / "app/bin/run.sh", 0o700)
    os.chmod(context / "app/notes.txt", 0o600)
    os.chmod(context / "app/bin", 0o700)
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nCOPY --chmod=u=rwX,go=rX app /app/\n"
        "COPY --chmod=+x app/notes.txt /usr/local/bin/notes\n")
    out = tmp_path / "out"
    build(context, local=out)
    modes = {p: (out / p).stat().st_mode & 0o7777
             for p in ("app/bin", "app/bin/run.sh", "app/notes.txt", "usr/local/bin/notes")}
    assert modes == {"app/bin": 0o755, "app/bin/run.sh": 0o755, "app/notes.txt": 0o644,
                     "usr/local/bin/notes": 0o711}
    (context / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY --chmod=u+q app /app/\n")
    with pytest.raises(BuildError, match=r"--chmod=u\+q: .*symbolic one like u\+x"):
        build(context)


def test_empty_exec_forms_clear_cmd_and_entrypoint(build, tmp_path: Path,
                                                   busybox_ref: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {busybox_ref}\nENTRYPOINT []\nCMD []\n")
    oci = tmp_path / "oci"
    result = build(context, oci=oci)
    assert result.image.config.config.cmd is None
    assert result.image.config.config.entrypoint is None
    config = json.loads((oci / "blobs/sha256" / result.image.manifest.config.digest.encoded)
                        .read_bytes())
    assert "Cmd" not in config["config"] and "Entrypoint" not in config["config"]


@pytest.mark.parametrize("sources,message", [
    ("notes.txt", "needs an http"),
    ("http://127.0.0.1:1/a.txt http://127.0.0.1:1/b.txt", "several sources"),
])
def test_add_checksum_needs_one_url(build, tmp_path: Path, busybox_ref: str, sources: str,
                                    message: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "notes.txt").write_text("local\n")
    digest = "sha256:" + "0" * 64
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nADD --checksum={digest} {sources} /dest/\n")
    with pytest.raises(BuildError, match=message):
        build(context)


def test_scratch_config_starts_as_buildkit_s(build, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "f.txt").write_text("x\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY f.txt /\n")
    cfg = build(context).image.config.config
    assert cfg.working_dir == "/"
    assert cfg.env == ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


@pytest.mark.parametrize("line", ["COPY f.txt /etc/passwd/x", "COPY f.txt /etc/passwd/",
                                  "WORKDIR /etc/passwd/sub"])
def test_a_file_in_the_way_of_a_directory_fails_the_step(build, tmp_path: Path,
                                                        busybox_ref: str, line: str) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "f.txt").write_text("x\n")
    (context / "Dockerfile").write_text(f"FROM {busybox_ref}\n{line}\n")
    with pytest.raises(BuildError, match="/etc/passwd is a file in the image, not a directory"):
        build(context)


@pytest.mark.parametrize(("line", "what"), [
    ("COPY tree /etc/passwd", "a directory's contents go"),
    ("COPY --from=files /tree /etc/passwd", "a directory's contents go"),
    ("ADD bundle.tar /etc/passwd", "an archive unpacks"),
])
def test_a_directory_onto_a_file_fails_the_step(build, tmp_path: Path, busybox_ref: str,
                                                 line: str, what: str) -> None:
    # BuildKit: "cannot copy to non-directory" (COPY), "not a directory" (ADD of an
    # archive); the file is not replaced by a directory.
    context = tmp_path / "ctx"
    (context / "tree").mkdir(parents=True)
    (context / "tree" / "x").write_text("x\n")
    with tarfile.open(context / "bundle.tar", "w") as tar:
        tar.add(context / "tree" / "x", arcname="x")
    (context / "Dockerfile").write_text(
        f"FROM scratch AS files\nCOPY tree /tree\nFROM {busybox_ref}\n{line}\n")
    with pytest.raises(BuildError, match=f"/etc/passwd is a file in the image, and {what} "
                                         "into a directory there"):
        build(context)


def test_a_file_onto_a_file_and_a_directory_onto_a_directory_still_copy(
        build, tmp_path: Path, busybox_ref: str) -> None:
    context = tmp_path / "ctx"
    (context / "tree").mkdir(parents=True)
    (context / "tree" / "x").write_text("x\n")
    (context / "f.txt").write_text("new\n")
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nCOPY f.txt /etc/passwd\nCOPY tree /etc\n")
    out = tmp_path / "out"
    build(context, local=out)
    assert (out / "etc/passwd").read_text() == "new\n"
    assert (out / "etc/x").read_text() == "x\n"


def test_copy_from_a_stage_keeps_its_owners(build, tmp_path: Path, busybox_ref: str) -> None:
    # BuildKit: COPY --from keeps the owners of a stage's files (--chown replaces them);
    # the context's files are root's whoever owns them here.
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "f.txt").write_text("f\n")
    os.chown(context / "f.txt", 1234, 5678)
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref} AS src\nARG OWNER\n"
        "RUN mkdir -p /data/sub && echo a > /data/sub/a && ln -s a /data/sub/l"
        " && chown -hR $OWNER /data\n"
        f"FROM {busybox_ref}\nCOPY --from=src /data /kept/\n"
        "COPY --from=src /data/sub/a /kept-file\nCOPY --from=src --chown=7:8 /data /chowned/\n"
        "COPY f.txt /from-context\n")

    def owners(out: Path, path: str) -> tuple[int, int]:
        st = os.lstat(out / path)
        return st.st_uid, st.st_gid

    storage = tmp_path / "storage"
    for owner in ((1234, 5678), (4321, 8765)):  # the second build differs in owners only
        out = tmp_path / f"out-{owner[0]}"
        build(context, local=out, storage=storage,
              build_args={"OWNER": f"{owner[0]}:{owner[1]}"})
        assert owners(out, "kept") == (0, 0)  # made for the directory's contents
        for path in ("kept/sub", "kept/sub/a", "kept/sub/l", "kept-file"):
            assert owners(out, path) == owner, path
        assert owners(out, "chowned/sub/a") == (7, 8)
        assert owners(out, "from-context") == (0, 0)


def test_run_in_a_workdir_through_a_link_sees_the_real_directory(
        build, tmp_path: Path, busybox_ref: str) -> None:
    # BuildKit (runc) sets no PWD: a shell's pwd is getcwd(), links resolved; bwrap sets
    # PWD to its --chdir, so that is given the resolved path.
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nRUN mkdir -p /real/.dot && ln -s /real /var/abs\n"
        "WORKDIR /var/abs/work\nRUN pwd > /pwd.txt\n"
        "WORKDIR /var/abs/.dot\nRUN pwd >> /pwd.txt\nWORKDIR /\nRUN pwd >> /pwd.txt\n")
    out = tmp_path / "out"
    result = build(context, local=out)
    assert (out / "pwd.txt").read_text() == "/real/work\n/real/.dot\n/\n"
    assert result.image.config.config.working_dir == "/"
