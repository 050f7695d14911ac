"""``ADD <git URL> <dir>``: the repository's commit, fetched as BuildKit fetches it
(``#REF:SUBDIR``, ``--keep-git-dir``), from ``git daemon`` on loopback."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from tests.helpers.git_server import commit, new_repository, serving_git

V1_TIME = 1_600_000_000  # 2020-09-13 12:26:40 UTC


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``URL/app.git``: v1 (tagged), then a second commit on main; the URL and checkout."""
    root = tmp_path / "git"
    work = new_repository(root / "app.git")
    (work / "app").mkdir()
    (work / "app" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (work / "app" / "run.sh").chmod(0o775)
    (work / "README").write_text("v1\n")
    (work / "README").chmod(0o600)  # git keeps only the executable bit: 0644 in the image
    os.symlink("README", work / "link")
    (work / "deep" / "er").mkdir(parents=True)
    (work / "deep" / "er" / "f.txt").write_text("deep\n")
    commit(work, "v1", when=f"@{V1_TIME} +0000")
    subprocess.run(["git", "-C", str(work), "tag", "v1"], check=True)
    (work / "README").write_text("v2\n")
    commit(work, "v2", when=f"@{V1_TIME + 3600} +0000")
    with serving_git(root) as url:
        yield f"{url}/app.git", work


def _dockerfile(tmp_path: Path, base: str, body: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM {base}\n{body}")
    return ctx


def test_add_of_a_git_repository_copies_its_commit(build, busybox_ref: str, repo,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    url, _ = repo
    ctx = _dockerfile(tmp_path, busybox_ref, f"ADD {url}#v1 /src\n"
                                             f"ADD {url}#main:app /app\n"
                                             f"ADD --keep-git-dir=true {url} /kept\n"
                                             f"ADD --chown=1000:1000 {url}#v1:deep /owned/\n")
    out = tmp_path / "out"
    build(ctx, local=out, storage=tmp_path / "s")
    src = out / "src"
    assert (src / "README").read_text() == "v1\n"
    assert stat.S_IMODE((src / "README").stat().st_mode) == 0o644
    assert stat.S_IMODE((src / "app" / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(src / "link") == "README"
    assert not (src / ".git").exists()
    # every entry has the commit's time: the same commit makes the same layer
    assert {int(p.lstat().st_mtime) for p in [src / "README", src / "link", src / "deep"]} \
        == {V1_TIME}
    assert sorted(p.name for p in (out / "app").iterdir()) == ["run.sh"]
    assert (out / "kept" / "README").read_text() == "v2\n"
    assert (out / "kept" / ".git").is_dir()
    assert (out / "owned" / "er" / "f.txt").read_text() == "deep\n"
    assert (out / "owned" / "er" / "f.txt").stat().st_uid == 1000

    again = build(ctx, storage=tmp_path / "s")
    assert len([s for s in again.cached_steps if "ADD" in s]) == 4
    # with SOURCE_DATE_EPOCH (the directories ADD makes have the build's time otherwise),
    # fetched and made again from nothing, the same commits make the same layers
    epoch = V1_TIME + 10**6
    made = [build(ctx, storage=tmp_path / f"fresh{i}", source_date_epoch=epoch)
            for i in range(2)]
    assert [layer.digest for layer in made[0].image.manifest.layers][:3] == \
        [layer.digest for layer in made[1].image.manifest.layers][:3]


def test_a_new_commit_on_the_branch_runs_the_step_again(build, busybox_ref: str, repo,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    url, work = repo
    ctx = _dockerfile(tmp_path, busybox_ref, f"ADD {url}#main /src\n")
    build(ctx, storage=tmp_path / "s")
    (work / "README").write_text("v3\n")
    commit(work, "v3")
    out = tmp_path / "out"
    result = build(ctx, local=out, storage=tmp_path / "s")
    assert not [s for s in result.cached_steps if "ADD" in s]
    assert (out / "src" / "README").read_text() == "v3\n"


@pytest.mark.parametrize(("fragment", "words"), [
    ("#no-such-ref", "cannot fetch"),
    ("#v1:no/such/dir", "'no/such/dir' is not a directory of the repository"),
    ("#v1:../..", "is not a directory of the repository"),
])
def test_a_ref_or_directory_that_is_not_there_fails_the_step(  # type: ignore[no-untyped-def]
        build, busybox_ref: str, repo, tmp_path: Path, fragment: str, words: str) -> None:
    url, _ = repo
    ctx = _dockerfile(tmp_path, busybox_ref, f"ADD {url}{fragment} /src\n")
    with pytest.raises(BuildError, match=f"Dockerfile:2.*{words.replace('(', '.')}"):
        build(ctx, storage=tmp_path / "s")


def test_a_repository_that_cannot_be_reached_fails_with_gits_words(  # type: ignore[no-untyped-def]
        build, busybox_ref: str, tmp_path: Path) -> None:
    ctx = _dockerfile(tmp_path, busybox_ref, "ADD git://127.0.0.1:9/none.git /src\n")
    with pytest.raises(BuildError, match="cannot fetch git://127.0.0.1:9/none.git: git fetch"):
        build(ctx, storage=tmp_path / "s")


def test_a_submodule_naming_a_host_path_is_not_fetched(  # type: ignore[no-untyped-def]
        build, busybox_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository is untrusted: a submodule naming a repository on the building host
    (file://, or a bare path) must not copy the host's files into the image, even where
    the user's git configuration allows local submodules."""
    config = tmp_path / "gitconfig"
    config.write_text("[protocol \"file\"]\n\tallow = always\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    secret = new_repository(tmp_path / "host-secret")
    (secret / "key").write_text("host secret\n")
    commit(secret, "secret")
    root = tmp_path / "git"
    work = new_repository(root / "evil.git")
    (work / "README").write_text("hi\n")
    subprocess.run(["git", "-C", str(work), "submodule", "add", "-q", str(secret), "stolen"],
                   check=True)
    commit(work, "with a submodule")
    with serving_git(root) as url:
        ctx = _dockerfile(tmp_path, busybox_ref, f"ADD {url}/evil.git /src\n")
        with pytest.raises(BuildError, match="cannot fetch .*git submodule: .*file.* not allowed"):
            build(ctx, local=tmp_path / "out", storage=tmp_path / "s")
    assert not (tmp_path / "out").exists()
