"""Fetching a Git repository as BuildKit does, for a build context from a git URL and for
``ADD <git URL> <dir>``.

A git URL is ``git://``, ``git@host:path``, ``ssh://``, or an http(s) URL whose path ends
in ``.git`` (a build context also takes ``github.com/...``), optionally followed by
``#REF:SUBDIR``: a branch, a tag or a commit (default: the remote's HEAD) and a directory
in the repository (default: its top). :func:`fetch` fetches that one commit at depth 1
with ``git`` (its submodules too), checks it out, and removes ``.git`` unless it is to be
kept. Git asks nothing on the terminal (a CI job's stdin is empty): a repository that
needs credentials fails with git's own words. Blocking: call it from a worker thread.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import urllib.parse
from pathlib import Path

__all__ = ["Fetched", "GitFetchError", "as_committed", "fetch", "is_git_url"]


class GitFetchError(ValueError):
    """The repository cannot be fetched, or names no such directory (the message says
    which and why)."""


class Fetched:
    """A checkout: ``path`` (``SUBDIR`` of it), ``commit`` (the full hash) and ``time``
    (the commit's time, seconds since the epoch)."""

    def __init__(self, path: Path, commit: str, time: int) -> None:
        self.path, self.commit, self.time = path, commit, time


def is_git_url(source: str, *, context: bool = False) -> bool:
    """Whether BuildKit fetches ``source`` as a Git repository: ``git://``, ``git@host:``,
    ``ssh://``, or an http(s) URL whose path ends in ``.git``; as a build ``context``,
    also ``github.com/...`` (Docker's rule for contexts)."""
    if source.startswith(("git://", "git@", "ssh://")) or (
            context and source.startswith("github.com/")):
        return True
    url = urllib.parse.urlparse(source.partition("#")[0])
    return url.scheme in ("http", "https") and url.path.rstrip("/").endswith(".git")


# A repository is untrusted input: its submodules may name local files (file://) or a
# command to run (ext::); git refuses neither everywhere by default.
_SAFE = ["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"]


def _git(args: list[str], url: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # no question to a CI job's empty stdin
    try:
        done = subprocess.run(["git", *_SAFE, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as exc:
        raise GitFetchError(f"{url} is a git repository and git is not installed: install "
                            "it (apt-get install git)") from exc
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise GitFetchError(f"cannot fetch {url}: git {args[0]}: {said}")
    return done.stdout


def fetch(url: str, into: Path, *, keep_git_dir: bool = False) -> Fetched:
    """Fetch ``url`` (module docstring) into the new directory ``into/repo``."""
    repo, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    if repo.startswith("github.com/"):
        repo = f"https://{repo}"
    if repo.startswith("-") or ref.startswith("-"):
        raise GitFetchError(f"{url}: a repository or reference cannot start with '-'")
    checkout = into / "repo"
    checkout.mkdir()
    _git(["init", "-q"], url, checkout)
    _git(["fetch", "-q", "--depth", "1", "--", repo, ref or "HEAD"], url, checkout)
    _git(["checkout", "-q", "FETCH_HEAD"], url, checkout)
    _git(["submodule", "update", "-q", "--init", "--recursive", "--depth", "1"], url, checkout)
    commit, _, when = _git(["log", "-1", "--format=%H %ct"], url, checkout).strip().partition(" ")
    if not keep_git_dir:
        shutil.rmtree(checkout / ".git")
    path = (checkout / subdir).resolve()
    if not path.is_relative_to(checkout.resolve()) or not path.is_dir():
        raise GitFetchError(f"{url}: {subdir!r} is not a directory of the repository")
    return Fetched(path, commit, int(when))


def as_committed(root: Path, when: int) -> None:
    """Give the checkout ``root`` what BuildKit's git source gives it whatever the umask
    of the host: files 0644 or 0755 (Git records only the executable bit), directories
    0755, and every entry the commit's time ``when`` (BuildKit's with ``SOURCE_DATE_EPOCH``),
    so the same commit makes the same layers on any machine."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)
            os.utime(path, (when, when), follow_symlinks=False)
        for name in dirs:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
            os.utime(path, (when, when), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (when, when))
