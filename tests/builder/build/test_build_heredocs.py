"""RUN and COPY heredocs in every form BuildKit runs them (testfiles/heredocs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.dockerfile.instructions import InlineFile, Run
from builder.image import ImageState
from builder.steps.common import BuildError
from builder.steps.run import _argv


def test_heredoc_forms_end_to_end(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(context_of("heredocs"), local=out)
    # the heredoc alone is the script, run by the SHELL (expanded by the shell at run time)
    assert (out / "simple.txt").read_text() == "script for builder\nsecond line\n"
    # with a shebang: an executable at /dev/pipes/<name>, so the interpreter is honoured
    assert (out / "awk.txt").read_text() == "from awk\n"
    assert (out / "shebang.txt").read_text() == "run as /dev/pipes/EOF\n"
    assert not (out / "dev/pipes").exists()
    assert (out / "tmp/nobody.txt").read_text() == "65534 ran /dev/pipes/EOF\n"
    # otherwise the shell gets the whole text and does the redirections itself
    assert (out / "redirect.txt").read_text() == "who=builder\n"
    assert (out / "quoted.txt").read_text() == "who=$WHO\n"
    assert (out / "a.txt").read_text() == "first\n"
    assert (out / "b.txt").read_text() == "second\n"
    assert (out / "tabs.txt").read_text() == "indented\n"
    assert (out / "piped.txt").read_text() == "piped to sh as sh\n"
    # COPY heredocs are files (expanded by the builder: the marker is unquoted)
    assert (out / "copied.txt").read_text() == "copied for builder\n"
    assert (out / "literal.txt").read_text() == "kept ${WHO}\n"  # quoted: not expanded
    assert (out / "chomped.txt").read_text() == "no tabs for builder\n"
    assert (out / "files/ONE").read_text() == "one\n"
    assert (out / "files/TWO").read_text() == "two\n"
    assert (out / "files/ONE").stat().st_mode & 0o777 == 0o644
    history = [h.created_by or "" for h in result.image.config.history or ()]
    assert any(h.startswith("RUN /bin/sh -c cat <<EOF > /redirect.txt\nwho=$WHO\nEOF")
               for h in history)


def _run(command: str, *files: InlineFile) -> Run:
    return Run(command=(command,), shell_form=True, files=files)


def test_argv_of_each_heredoc_form() -> None:
    state = ImageState.scratch()
    body = InlineFile("EOF", "echo hi\n")
    assert _argv(_run("<<EOF", body), state, "here") == (("/bin/sh", "-c", "echo hi\n"), {})
    script = InlineFile("EOF", "#!/bin/sh\necho hi\n")
    assert _argv(_run("<<EOF", script), state, "here") == (
        ("/bin/sh", "-c", "/dev/pipes/EOF"), {"EOF": b"#!/bin/sh\necho hi\n"})
    assert _argv(_run("python3 <<EOF", body), state, "here") == (
        ("/bin/sh", "-c", "python3 <<EOF\necho hi\nEOF"), {})
    two = (InlineFile("A", "1\n"), InlineFile("B", "2\n"))
    assert _argv(_run("<<A cat > a && cat <<B > b", *two), state, "here")[0][-1] == \
        "<<A cat > a && cat <<B > b\n1\nA\n2\nB"
    state.update(shell=("/bin/bash", "-eu", "-c"))
    assert _argv(_run("<<EOF", body), state, "here")[0] == ("/bin/bash", "-eu", "-c", "echo hi\n")


def test_heredoc_in_exec_form_is_refused() -> None:
    ins = Run(command=("cat", "<<EOF"), shell_form=False, files=(InlineFile("EOF", "x\n"),))
    with pytest.raises(BuildError, match="shell form"):
        _argv(ins, ImageState.scratch(), "Dockerfile:2: RUN")
