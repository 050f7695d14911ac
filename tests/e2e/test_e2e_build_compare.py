"""pybuild build against docker build (BuildKit): the same Dockerfiles give the same images.

Each case in ``testfiles/build-compare/<case>/`` is built twice, FROM a busybox base pushed
to a ``pybuild serve`` started here: by Debian's docker client with ``DOCKER_BUILDKIT=1``
against the test engine, and by ``python3 -m builder build --output type=docker,dest=...``
whose archive is then ``docker load``ed. Both images are run (``--network none``) and
their outputs compared; their root filesystems (``docker create`` + ``docker export``) are
compared entry by entry (path, type, mode, owner, size, content hash, link target, the
xattrs the export records, but not mtimes), and so are their configs as ``docker image
inspect`` reports them (and, for the cases that ask, their history as ``docker history``
shows it).

Together the cases use every Dockerfile instruction (see each Dockerfile's header).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit.docker_engine import DockerEngine
from testkit.registries import RunningRegistry, pybuild_registry
from testkit.tools import in_ci, require_tool, running_ssh_agent
from tests.helpers.at_once import both_at_once
from tests.helpers.http_server import serve_answers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).resolve().parent / "testfiles" / "build-compare"

# Paths the engine itself puts into every container (not part of either image).
ENGINE_PATHS = frozenset({".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"})
# Directories whose contents the engine provides (their own entries are still compared).
ENGINE_DIRS = ("dev/", "proc/", "sys/")

_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

# The config fields compared (``docker image inspect``'s ``.Config``).
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes",
               "Labels", "StopSignal", "Healthcheck", "OnBuild", "Shell", "ArgsEscaped")


@dataclass(frozen=True)
class Case:
    """One Dockerfile directory, its extra build args and the command its containers run."""

    name: str
    build_args: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    # Text the run output must contain (so a case that prints nothing cannot pass).
    expect: str = ""
    # Options for pybuild build only (the same Dockerfile, another way of building it).
    pybuild_flags: tuple[str, ...] = ()
    # Both builders get an SSH agent: --ssh default=<a test ssh-agent's socket>, or with
    # ssh_key a private key file (--ssh default=<key>), which each serves from an agent
    # of its own.
    ssh: bool = False
    ssh_key: bool = False
    # Mount points (and the parents made for them) that BuildKit before 0.11, as in
    # Docker 20.10, leaves in the image as empty directories; BuildKit 0.11 and later
    # (dockerfile frontend 1.5) remove them, and so does pybuild.
    stub_dirs: tuple[str, ...] = ()
    # Options for both builders, the environment both get, and whether both read the
    # Dockerfile from stdin (-f -).
    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: bool = False
    # Hard links (existing, new) made in the context before building (git keeps none).
    links: tuple[tuple[str, str], ...] = ()
    # Commands run in the context before building (owners, modes: git keeps neither).
    prepare: tuple[tuple[str, ...], ...] = ()
    # Compare the history entries' created_by too (only where Docker 20.10's BuildKit
    # writes what later ones write: see the case's Dockerfile).
    history: bool = False
    # Paths that carry a file capability (security.capability) in docker's image, so that
    # the comparison of xattrs is not between two images that have none.
    capabilities: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return "-".join([self.name, *(f.lstrip("-") for f in self.pybuild_flags),
                         *(["keyfile"] if self.ssh_key else [])])


# What hardlinks-later prints: each change seen under every name of its link group.
HARDLINKS_OUT = ("a\nb\na\nb\none\ntwo\none\ntwo\nm\nn\ncopied into the image\nvia-link\n"
                 "x\ny\n/data/f1 2 644 1\n/data/sub/f2 2 644 1\n/data/h1 2 600 0\n"
                 "/data/h-renamed 2 600 0\n/data/g1 2 644 0\n/data/m2 2 640 0\n"
                 "/data/copied.txt 2 644 0\n")

# What bind-file-mounts prints, and the directories old BuildKit leaves for its mounts.
BIND_FILE_OUT = ("flask==3.0\nrequests==2.31\nread-only\nbuilt by a stage\nflask==3.0\n"
                 "requests==2.31\nsetting=1\nflask==3.0\nrequests==2.31\nmore\n1\n")
BIND_FILE_STUBS = ("opt", "opt/new", "opt/new/deeper", "srv", "srv/conf", "var/lib")

# What run-sandbox prints (docker always builds with --network none here).
RUN_SANDBOX_OUT = ("127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost "
                   "ip6-loopback\nbuildkitsandbox\nresolv.conf 644 0:0\n"
                   "uid=1000(tester) gid=1000(tester) groups=50(staff)\nHOME=/home/tester\n"
                   "uid=4321 gid=0(root)\nHOME=/\n")

# The tail of what file-kinds prints: kinds and modes of /k's entries, then contents.
FILE_KINDS_OUT = ("/k/meta/file 600 1000:50 regular file\n/k/meta/sub 700 12:34 directory\n"
                  "/k/new\n/k/" + "n" * 120 + " 755 0:0 directory\n/k/null 644 0:0 character "
                  "special file\n/k/sgid 2711 0:0 regular file\n/k/sparse 644 0:0 regular file\n"
                  "/k/sticky 1777 0:0 directory\n/k/suid 4755 0:0 regular file\n"
                  "/k/swap-to-dir 755 0:0 directory\n/k/to-dir 755 0:0 directory\n"
                  "/k/to-file 644 0:0 regular file\n/k/was-link 644 0:0 regular file\n"
                  "/k/with space 644 0:0 regular file\nline 644 0:0 regular file\n"
                  "now-dir\nnow-file\nreplaced\ndeep\n3145733\n")

# What add-archive-links prints: /dst's paths, each with the first name of its inode, then
# contents: the archive's links joined the stage's files, as Docker's untar links them.
ADD_LINKS_OUT = (". . 4 755 0:0 directory\n./a ./a 3 644 0:0 regular file\n"
                 "./a ./b 3 644 0:0 regular file\n./c ./c 2 750 1000:50 regular file\n"
                 "./c ./d 2 750 1000:50 regular file\n./a ./e 3 644 0:0 regular file\n"
                 "./keep ./keep 1 644 0:0 regular file\n./lnk ./lnk 1 777 0:0 symbolic link\n"
                 "./n ./n 2 755 0:0 directory\n./n/c2 ./n/c2 2 644 0:0 regular file\n"
                 "./old ./old 1 644 0:0 regular file\n./s ./s 1 777 0:0 symbolic link\n"
                 "./sl ./sl 1 777 0:0 symbolic link\n./sub ./sub 2 750 7:8 directory\n"
                 "./n/c2 ./sub/c 2 644 0:0 regular file\n./x ./x 2 644 0:0 regular file\n"
                 "./x ./xl 2 644 0:0 regular file\na: old a\nb: old a\ne: old a\nxl: dst x\n"
                 "x: dst x\nn/c2: sub c\nsub/c: sub c\nc: the archive's c\n"
                 "d: the archive's c\nkeep: stage old\nold: the archive's old\n/x: root x\na\n")

# What add-archive-names prints: /dst's paths (links, mode, type), then contents: every
# name that climbed out of /dst landed inside it.
ADD_NAMES_OUT = (". 4 711 directory\n./abs 2 755 directory\n./abs/name 1 640 regular file\n"
                 "./b 1 644 regular file\n./deep 1 644 regular file\n"
                 "./escape 2 600 regular file\n./etc 2 755 directory\n"
                 "./etc/passwd 1 644 regular file\n./h 2 600 regular file\n"
                 "./link 1 777 symbolic link\n./abs/name: was /abs/name\n./b: was a/../../b\n"
                 "./deep: was x/../../../../deep\n./escape: was ../escape\n"
                 "./etc/passwd: through the link\n./h: was ../escape\n/b: root b\n"
                 "/escape: root escape\n1\n")

# What account-links prints: the ids of names looked up through linked account files.
ACCOUNT_LINKS_OUT = ("/f.txt 1000:50\n/w 1000:1000\n/tmp/id.txt 1000:1000\n"
                     "uid=1000(tester) gid=1000(tester) groups=50(staff)\n")

CASES = (
    Case("files", {"GREETING": "howdy"},
         expect="howdy from tester\nexec-form\n1000\nnotes, added as a plain file\n"
                "notes, added as a plain file\nfresh\nhello from a script\n"),
    Case("config", {"VERSION": "1.2.3"}, expect="entry: one two\nversion=1.2.3 unused=unset\n"),
    Case("entrypoint-shell", expect="shell-form entrypoint, 0 arguments\n"),
    Case("entrypoint-exec", expect="exec-form entrypoint: set in this stage\n"),
    Case("multistage", expect="generated in the build stage\ndeep\n"),
    Case("onbuild-base", command=("stat", "-c", "%n %a %u", "/app"), expect="/app 755 0\n"),
    Case("onbuild-child", {"FLAVOUR": "spicy"},
         expect="copied by an ONBUILD trigger\ntrigger ran\nTRIGGERED=yes spicy-in-/app\n"
                "trigger.txt\n"),
    Case("workdir-users", expect="unknown 0:0 755\nuid 1000:1000 755\n"),
    # the snapshot differ (where overlayfs cannot be mounted) against the richest case
    Case("files", {"GREETING": "howdy"}, expect="howdy from tester\nexec-form\n1000\n",
         pybuild_flags=("--differ", "snapshot")),
    Case("platform-args", expect=f" -> linux/{_HOST_ARCH} linux {_HOST_ARCH} []\n"
                                 f"arch={_HOST_ARCH}\n"),
    Case("sigpipe", expect="1000\ny\ny\ny\ny\ny\nyes exited with 141\nxxxxxxxxxx"
                            "cat exited with 141\nline 0\nline 1\nline 2\nloop exited with 0\n"
                            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"),
    Case("expansion-nesting", expect="nested=ok quoted=a-b long=ok-ok\n"),
    Case("ssh-mount", ssh=True,
         expect="/run/buildkit/ssh_agent.0 600 0 0 socket\n/tmp/agent.sock 660 1000 50\n"
                "sock=/tmp/agent.sock\n"),
    Case("ssh-mount", ssh_key=True,
         expect="/run/buildkit/ssh_agent.0 600 0 0 socket\n/tmp/agent.sock 660 1000 50\n"
                "sock=/tmp/agent.sock\n"),
    Case("hardlinks-later", expect=HARDLINKS_OUT),
    Case("hardlinks-later", expect=HARDLINKS_OUT, pybuild_flags=("--differ", "snapshot")),
    Case("bind-file-mounts", expect=BIND_FILE_OUT, stub_dirs=BIND_FILE_STUBS),
    Case("bind-file-mounts", expect=BIND_FILE_OUT, stub_dirs=BIND_FILE_STUBS,
         pybuild_flags=("--differ", "snapshot")),
    Case("add-archives", expect="from a v7 tar\ninside a tar.gz\na text file with a .tar name\n"
                                "/plain:\ndata.json.gz\nnotes.tar\n"),
    Case("add-archive-links", expect=ADD_LINKS_OUT),
    Case("add-archive-links", expect=ADD_LINKS_OUT, pybuild_flags=("--differ", "snapshot")),
    Case("add-archive-names", expect=ADD_NAMES_OUT),
    Case("add-archive-names", expect=ADD_NAMES_OUT, pybuild_flags=("--differ", "snapshot")),
    Case("empty-wildcard", expect="/opt:\napp\n\n/opt/app:\npom.xml\n"),
    Case("chown-forms", expect="/group-only 0:50\n/user-colon 1000:0\n/colon-only 0:0\n"
                               "/root-staff 0:50\n/ghost 0:0\n/ghost-staff 0:50\n"
                               "/tester-ghosts 1000:1000\n/uid-ghosts 1000:1000\n"
                               "/bare/own-root 0:0\n/bare/own-root-root 0:0\n"),
    Case("hardlink-sources", links=(("pair/one.txt", "pair/one.hard"),),
         expect="/linked/one.txt 2\n/linked/one.hard 2\n/separate/one.txt 1\n"
                "/separate/one.hard 1\n/matched/one.txt 1\n/matched/one.hard 1\n"),
    Case("add-urls", expect="__unnamed__ 600 0\ndated.txt 600 1557050400\ndir 600 0\n"
                            "my file.txt 600 0\nserved for /files/dir/\n"),
    Case("symlinked-dest", expect="new\nnew\nnew\nnew\nfrom-tree\no\nnew\nold\n1\n"),
    Case("proxy-args", {"HTTP_PROXY": "http://proxy.invalid:3128", "no_proxy": "localhost"},
         expect="HTTP_PROXY=http://proxy.invalid:3128\nNO_PROXY=localhost\n"
                "http_proxy=http://proxy.invalid:3128\nno_proxy=localhost\n0\n"),
    Case("stage-args", {"FROM_CLI": "given"},
         expect="deps: 1.0\nversion=1.0 cli=given unset=yes\nenv:\n"),
    Case("empty-commands", command=("echo", "cleared"), expect="cleared\n"),
    Case("arg-over-env", history=True,
         expect="PATH=/usr/bin:/bin:/from-arg FIRST=arg\nFIRST=env-again LATER=env-default\n"),
    Case("windows-files", expect="hello windows\n/ctx/.dockerignore\n/ctx/build/sub/keep.txt\n"
                                 "/ctx/dockerfile\n"),
    Case("workdir-forms", history=True, expect="/srv/data\n/srv/app\n/app\ncopied\n"),
    Case("history", history=True,
         expect="1.0 prod\nunder SHELL: 1.0\nx\ncafé tab\there 'q'\n"),
    Case("file-kinds", expect=FILE_KINDS_OUT),
    Case("file-kinds", expect=FILE_KINDS_OUT, pybuild_flags=("--differ", "snapshot")),
    Case("run-sandbox", expect=RUN_SANDBOX_OUT),
    Case("run-sandbox", expect=RUN_SANDBOX_OUT, pybuild_flags=("--network", "none")),
    Case("many-layers", expect="88\n1\n39\n41\n90\n"),
    Case("scratch-final",
         expect="/\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
    Case("buildx-flags", stdin=True, stub_dirs=("run/secrets",),
         flags=("--add-host", "db.internal:10.1.2.3", "--add-host", "cache.internal:10.1.2.4",
                "--secret", "id=token,env=PYBUILD_COMPARE_TOKEN"),
         env={"PYBUILD_COMPARE_TOKEN": "from-the-environment"},
         expect="10.1.2.3\tdb.internal\n10.1.2.4\tcache.internal\nfrom-the-environment"
                "kept.txt\n65536\n1777\n"),
    Case("context-symlinks",
         expect="/abs\n/abs/inner\n/abs/inner/i.txt\n/abs/r.txt\n/absfile.txt\n/dotdot.txt\n"
                "/from-dirlink\n/from-dirlink/f\n/from-dirlink/s2\n/from-glob\n/from-glob/f\n"
                "/from-glob/s1\n/from-glob/s2\n/from-link.txt\n/globbed\n/globbed/absfile\n"
                "/globbed/inner\n/globbed/inner/i.txt\n/globbed/r.txt\n/rel\n/rel/inner\n"
                "/rel/inner/i.txt\n/rel/r.txt\nr\nr\nhi\nr\nhi\n"),
    Case("copy-owners",
         prepare=(("chown", "1234:5678", "owned.txt", "d"), ("chmod", "4755", "suid"),
                  ("chmod", "700", "d"), ("chmod", "600", "private.txt"),
                  ("chmod", "777", "world.txt")),
         expect="/chowned 755 7:8\n/chowned/a 4711 7:8\n/chowned/l 777 7:8\n/ctx 755 0:0\n"
                "/ctx/Dockerfile 644 0:0\n/ctx/d 700 0:0\n/ctx/d/x 644 0:0\n"
                "/ctx/owned.txt 644 0:0\n/ctx/private.txt 600 0:0\n/ctx/suid 4755 0:0\n"
                "/ctx/world.txt 777 0:0\n/from-stage 755 0:0\n/from-stage-file 4711 1234:5678\n"
                "/from-stage/sub 700 1234:5678\n/from-stage/sub/a 4711 1234:5678\n"
                "/from-stage/sub/l 777 1234:5678\n/owned-single 644 0:0\n"),
    Case("ignore-patterns", prepare=(("touch", "!x.txt", "a*b.txt", "weird[1].txt"),),
         expect="/ctx\n/ctx/!x.txt\n/ctx/Dockerfile\n/ctx/README.md\n/ctx/a*b.txt\n"
                "/ctx/a1.txt\n/ctx/by.txt\n/ctx/docs\n/ctx/docs/a.md\n/ctx/src\n/ctx/src/app\n"
                "/ctx/src/app/main.py\n/ctx/src/app/util.py\n/ctx/weird[1].txt\n"),
    Case("linked-paths", stub_dirs=("real/cache",),
         expect="/real/work\nt\nc\nctx\n/real/work\n/real/copied\n/real/copied/ctx.txt\n"
                "/real/dir\n/real/work\n/run\n"),
    Case("cache-mount-starts", stub_dirs=("c",),
         expect=". 755 0:0\n./s.txt 4750 0:0\n./sub 700 1000:50\n./sub/d.txt 644 1000:50\n"
                "seeded\ndeep\nplain: 0 entries 755 0:0\nown: mine 710 1000:50\n"
                "same id, no uid: 0 entries 755 0:0\n"),
    Case("account-links", expect=ACCOUNT_LINKS_OUT),
    Case("account-links", expect=ACCOUNT_LINKS_OUT, pybuild_flags=("--differ", "snapshot")),
    Case("missing-workdir", expect="/gone 755 1000:50\n/gone/deeper 755 1000:50\n"
                                   "/kept 755 4321:4321\n/gone/deeper\n"),
    Case("missing-workdir", expect="/gone 755 1000:50\n/gone/deeper 755 1000:50\n"
                                   "/kept 755 4321:4321\n/gone/deeper\n",
         pybuild_flags=("--differ", "snapshot")),
    Case("relative-mount-targets",
         stub_dirs=("w/ctx", "w/compare-relative-cache", "w/tmp-dir", "x/compare-relative-cache"),
         expect="from the context\ncache in /w/compare-relative-cache\ntmpfs\nsame id: mark\n"
                "absolute: 0\nfrom the context\n"),
    Case("user-empty-part", expect="uid=0(root) gid=50(staff)\nuid=0(root) gid=0(root)\n"
                                   "/made-by-staff 0:50\n/made-by-staff/f 0:50\n"),
    Case("copy-from-xattrs", capabilities=("usr/local/bin/server", "usr/local/bin/server-0750",
                                           "srv/app/server"),
         expect="/usr/local/bin/server 755 0:0\n/usr/local/bin/server-0750 750 0:0\n"
                "/srv/app/server 755 1000:50\n"),
    Case("big-ids-classes",
         expect="uid=3000000000(big) gid=4294967294(biggrp)\n"
                "/neg-caret/!1 3000000000:4294967294\n/neg-caret/^1 3000000000:4294967294\n"
                "/neg-caret/b1 3000000000:4294967294\n/neg-bang/!1 0:0\n/neg-bang/a1 0:0\n"
                "/home/big/w 3000000000:4294967294\n/tmp/made-by-big 3000000000:4294967294\n"),
    Case("bind-context-ignore", stub_dirs=("src", "k"),
         expect="/src\n/src/.dockerignore\n/src/Dockerfile\n/src/keep\n/src/keep/k.txt\n/k\n"
                "/k/k.txt\n"),
)


# ---------------------------------------------------------------------------------------
# Fixtures: one registry holding the busybox base, the docker-built ONBUILD base


def _pybuild(*args: str, timeout: float = 300,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"pybuild {' '.join(args)} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def builds_as_root() -> None:
    """pybuild's RUN steps need root and bubblewrap."""
    if os.geteuid() != 0:
        message = "pybuild build needs root (RUN steps use mounts and namespaces)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    require_tool("bwrap")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A ``pybuild serve`` on a free loopback port for this module."""
    with pybuild_registry(tmp_path_factory.mktemp("compare-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def base_ref(registry: RunningRegistry, busybox_layout: Path,
             tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image, pushed to the registry by pybuild's client."""
    ref = registry.ref("compare/busybox", "1")
    seed = tmp_path_factory.mktemp("compare-seed")
    _pybuild("copy", "--storage", str(seed), f"oci:{busybox_layout}:latest", ref)
    return ref


@pytest.fixture(scope="module")
def tag_suffix() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def onbuild_base_ref(docker_engine: DockerEngine, registry: RunningRegistry, base_ref: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """onbuild-base as docker build makes it, pushed to the registry: the base both
    builders use for onbuild-child (so that case compares the triggers' effects only;
    the base itself is compared as its own case)."""
    ref = registry.ref("compare/onbuild-base", "docker")
    context = _context(CASES_DIR / "onbuild-base", tmp_path_factory.mktemp("onbuild-base"))
    docker_engine.run("build", "--network", "none", "--build-arg", f"BASE={base_ref}",
                      "-t", ref, str(context), build=True)
    docker_engine.run("push", ref)
    try:
        yield ref
    finally:
        docker_engine.run("rmi", "--force", ref, check=False)


# ---------------------------------------------------------------------------------------
# Building, running and reading both images


def _context(case_dir: Path, dest: Path) -> Path:
    context = dest / "context"
    shutil.copytree(case_dir, context, symlinks=True)
    return context


def _docker_build(engine: DockerEngine, context: Path, tag: str, args: dict[str, str],
                  *extra: str, stdin: str | None = None) -> None:
    argv = ["build", "--network", "none", "-t", tag, *extra]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if stdin is not None:
        argv += ["-f", "-"]
    engine.run(*argv, str(context), build=True,
               input=stdin.encode() if stdin is not None else None)


def _pybuild_build(context: Path, storage: Path, tag: str, args: dict[str, str],
                   *extra: str, stdin: str | None = None) -> str:
    """``pybuild build`` with ``extra`` options (the Dockerfile from ``stdin`` if given);
    returns the digest it prints."""
    argv = ["build", "--progress", "plain", "--storage", str(storage), "-t", tag, *extra]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if stdin is not None:
        argv += ["-f", "-"]
    return _pybuild(*argv, str(context), stdin=stdin).stdout.strip()


@dataclass(frozen=True)
class Entry:
    """One file of an exported root filesystem, without its mtime; ``xattrs``: those the
    export records (Docker's archives keep ``security.capability``)."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str
    link: str
    xattrs: tuple[tuple[str, str], ...] = ()


def _type(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return "hardlink"
    if member.issym():
        return "symlink"
    if member.isdir():
        return "dir"
    if member.isfile():
        return "file"
    return f"special:{member.type!r}"


def _filesystem(engine: DockerEngine, image: str, dest: Path,
                command: tuple[str, ...] = ()) -> dict[str, Entry]:
    """The root filesystem of a container of ``image`` (``docker export``), by path;
    ``command`` for an image that has none."""
    container = engine.run("create", "--network", "none", image, *command).stdout.strip()
    archive = dest / f"{container}.tar"
    try:
        engine.run("export", "-o", str(archive), container)
    finally:
        engine.run("rm", "--force", container, check=False)
    entries: dict[str, Entry] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            path = member.name.strip("/").removeprefix("./")
            if not path or path in ENGINE_PATHS or path.startswith(ENGINE_DIRS):
                continue
            digest = ""
            if member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                digest = hashlib.sha256(data.read()).hexdigest()
            xattrs = tuple(sorted((k.removeprefix("SCHILY.xattr."), v)
                                  for k, v in member.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            entries[path] = Entry(type=_type(member), mode=member.mode, uid=member.uid,
                                  gid=member.gid, size=member.size, sha256=digest,
                                  link=member.linkname, xattrs=xattrs)
    archive.unlink()
    return entries


def _inspect(engine: DockerEngine, image: str) -> dict[str, Any]:
    info = json.loads(engine.run("image", "inspect", image).stdout)[0]
    config = info["Config"] or {}
    picked = {key: config.get(key) for key in CONFIG_KEYS}
    picked["Author"] = info.get("Author") or ""
    return picked


def _history(engine: DockerEngine, image: str) -> list[str]:
    """``docker history``'s CREATED BY column, newest first, untruncated."""
    return engine.run("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                      image).stdout.splitlines()


def _diff(docker: dict[str, Entry], pybuild: dict[str, Entry]) -> list[str]:
    lines = []
    for path in sorted(docker.keys() | pybuild.keys()):
        left, right = docker.get(path), pybuild.get(path)
        if left != right:
            lines.append(f"{path}:\n  docker:  {left}\n  pybuild: {right}")
    return lines


# ---------------------------------------------------------------------------------------
# The tests


@pytest.fixture(scope="module")
def http_files() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 for add-urls (the engine downloads from it): every
    path answers with its own name; /files/dated.txt has a Last-Modified date."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        dated = {"Last-Modified": "Sun, 05 May 2019 10:00:00 GMT"}
        return 200, dated if path == "/files/dated.txt" else {}, f"served for {path}\n".encode()

    with serve_answers(answer) as url:
        yield url


@pytest.fixture(scope="module")
def ssh_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running ssh-agent (no keys needed: the cases look at the socket) on a short path."""
    with running_ssh_agent("pybuild-compare") as sock:
        yield sock


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pybuild_and_docker_build_agree(
    case: Case, docker_engine: DockerEngine, builds_as_root: None, base_ref: str,
    request: pytest.FixtureRequest, tag_suffix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = {"BASE": base_ref, **case.build_args}
    if case.name == "onbuild-child":
        args["ONBUILD_BASE"] = request.getfixturevalue("onbuild_base_ref")
    if case.name == "add-urls":
        args["URL"] = request.getfixturevalue("http_files")
    context = _context(CASES_DIR / case.name, tmp_path)
    for existing, new in case.links:
        os.link(context / existing, context / new)
    for argv in case.prepare:
        subprocess.run(argv, cwd=context, check=True)
    docker_tag = f"compare-docker/{case.id}:{tag_suffix}"
    pybuild_tag = f"compare-pybuild/{case.id}:{tag_suffix}"
    archive = tmp_path / "image.tar"
    both: tuple[str, ...] = case.flags
    if case.ssh:
        both += ("--ssh", f"default={request.getfixturevalue('ssh_agent')}")
    if case.ssh_key:
        key_file = tmp_path / "deploy_key"
        subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                        str(key_file)], check=True)
        both += ("--ssh", f"default={key_file}")
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setitem(docker_engine.env, key, value)
    stdin = None
    if case.stdin:  # the Dockerfile goes on stdin and is not in the context
        stdin = (context / "Dockerfile").read_text()
        (context / "Dockerfile").unlink()

    def docker_side() -> tuple[str, dict[str, Entry]]:
        _docker_build(docker_engine, context, docker_tag, args, *both, stdin=stdin)
        return (docker_engine.run_container(docker_tag, *case.command),
                _filesystem(docker_engine, docker_tag, tmp_path, case.command))

    def pybuild_side() -> tuple[str, dict[str, Entry]]:
        _pybuild_build(context, tmp_path / "storage", pybuild_tag, args, *both,
                       *case.pybuild_flags, "--output", f"type=docker,dest={archive}",
                       stdin=stdin)
        loaded = docker_engine.run("load", "-i", str(archive)).stdout
        assert f"Loaded image: {pybuild_tag}" in loaded
        return (docker_engine.run_container(pybuild_tag, *case.command),
                _filesystem(docker_engine, pybuild_tag, tmp_path, case.command))

    try:
        # Each builder's image is built, run and exported while the other's is: the two
        # sides share nothing but the engine and the read-only context.
        (docker_out, docker_fs), (pybuild_out, pybuild_fs) = both_at_once(docker_side,
                                                                          pybuild_side)

        # The same output when run...
        assert pybuild_out == docker_out
        assert case.expect in docker_out

        # ...the same files...
        assert "bin/busybox" in docker_fs
        for path in case.capabilities:
            assert "security.capability" in dict(docker_fs[path].xattrs), path
        for path in sorted(case.stub_dirs, key=lambda p: p.count("/"), reverse=True):
            stub = docker_fs.pop(path, None)
            assert stub is None or stub.type == "dir", (path, stub)
            assert not any(p.startswith(path + "/") for p in docker_fs), path
            assert path not in pybuild_fs, path
        differences = _diff(docker_fs, pybuild_fs)
        assert not differences, "root filesystems differ:\n" + "\n".join(differences)

        # ...and the same config.
        assert _inspect(docker_engine, pybuild_tag) == _inspect(docker_engine, docker_tag)
        if case.history:
            assert _history(docker_engine, pybuild_tag) == _history(docker_engine, docker_tag)
    finally:
        docker_engine.run("rmi", "--force", docker_tag, pybuild_tag, check=False)


@pytest.mark.parametrize("dockerfile, docker_says, pybuild_says", [
    ("missing.Dockerfile", "link /nope /b: no such file or directory",
     "entry 'b' is a hard link to 'nope', which is neither in the archive before it nor in "
     "the image at /dst/nope"),
    ("dir.Dockerfile", "link /sub /b: operation not permitted",
     "entry 'b' is a hard link to 'sub', which is a directory (/dst/sub)"),
], ids=["missing", "directory"])
def test_pybuild_and_docker_build_refuse_the_same_archive_links(
    docker_engine: DockerEngine, builds_as_root: None, base_ref: str, tmp_path: Path,
    dockerfile: str, docker_says: str, pybuild_says: str,
) -> None:
    """add-archive-links' archives whose hard link names nothing, or a directory, at the
    destination: BuildKit fails the ADD, and so does pybuild, naming the entry."""
    context = _context(CASES_DIR / "add-archive-links", tmp_path)
    docker = docker_engine.run("build", "--network", "none", "--build-arg", f"BASE={base_ref}",
                               "-f", str(context / dockerfile), str(context), build=True,
                               check=False)
    assert docker.returncode != 0 and docker_says in docker.stdout + docker.stderr
    pybuild = subprocess.run(
        [sys.executable, "-m", "builder", "build", "--progress", "plain", "--storage",
         str(tmp_path / "storage"), "--build-arg", f"BASE={base_ref}", "-f",
         str(context / dockerfile), str(context)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert pybuild.returncode != 0
    assert f"{dockerfile}:4: ADD" in pybuild.stderr and pybuild_says in pybuild.stderr


def test_pybuild_leaves_out_the_whiteout_names_docker_writes_as_files(
    docker_engine: DockerEngine, builds_as_root: None, base_ref: str, tmp_path: Path,
    tag_suffix: str,
) -> None:
    """add-archive-whiteouts: BuildKit's image, run on the engine that built it, shows the
    archive's .wh.* names as files; pybuild's shows everything else the same (no layer can
    carry those names as files: see the case's Dockerfile), and neither deletes a file."""
    context = _context(CASES_DIR / "add-archive-whiteouts", tmp_path)
    docker_tag = f"compare-docker/add-archive-whiteouts:{tag_suffix}"
    pybuild_tag = f"compare-pybuild/add-archive-whiteouts:{tag_suffix}"
    archive = tmp_path / "image.tar"
    try:
        _docker_build(docker_engine, context, docker_tag, {"BASE": base_ref})
        _pybuild_build(context, tmp_path / "storage", pybuild_tag, {"BASE": base_ref},
                       "--output", f"type=docker,dest={archive}")
        docker_engine.run("load", "-i", str(archive))
        docker_out = docker_engine.run_container(docker_tag).splitlines()
        pybuild_out = docker_engine.run_container(pybuild_tag).splitlines()
        whiteout_names = [line for line in docker_out if "/.wh." in line]
        assert whiteout_names == ["/dst/.wh.kept", "/dst/.wh.new", "/dst/.wh.victim",
                                  "/dst/sub/.wh..wh..opq", "/dst/.wh.kept: w",
                                  "/dst/.wh.new: w", "/dst/.wh.victim: w",
                                  "/dst/sub/.wh..wh..opq: o"]
        assert pybuild_out == [line for line in docker_out if line not in whiteout_names]
        assert "/dst/victim: from the context" in pybuild_out
        assert "/dst/kept: stage kept" in pybuild_out
        assert "/dst/sub/old: stage old" in pybuild_out
    finally:
        docker_engine.run("rmi", "--force", docker_tag, pybuild_tag, check=False)


def test_fresh_storages_build_the_same_digest(
    builds_as_root: None, base_ref: str, tmp_path: Path,
) -> None:
    """Two builds of the same context, each with a fresh --storage (so each pulls the base
    from the registry and runs every step), give the same image digest."""
    context = _context(CASES_DIR / "files", tmp_path)
    args = {"BASE": base_ref, "GREETING": "howdy"}

    def build(run: str) -> str:
        oci = tmp_path / f"oci-{run}"
        digest = _pybuild_build(
            context, tmp_path / f"storage-{run}", "compare/repro:1", args,
            "--output", f"type=oci,dest={oci},tar=false", "--source-date-epoch", "1700000000",
        )
        index = json.loads((oci / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        return digest

    # The two builds share nothing but the context: they run at once.
    digests = both_at_once(lambda: build("a"), lambda: build("b"))
    assert digests[0].startswith("sha256:")
    assert digests[0] == digests[1]
