"""Fixtures for sandbox tests: a busybox root, the executors, a step runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.sandbox import Executor, RootfsMode, RunSpec, run_step
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import require_tool
from tests.helpers.sandbox_steps import PATH, Runner, Step, require_root


@pytest.fixture(scope="session")
def base_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "root")


@pytest.fixture(params=[Executor.BWRAP, Executor.CHROOT], ids=lambda e: e.value)
def executor(request: pytest.FixtureRequest) -> Executor:
    require_root()
    if request.param is Executor.BWRAP:
        require_tool("bwrap")
    return request.param


@pytest.fixture
def run(base_root: Path, tmp_path: Path, executor: Executor) -> Runner:
    """``run(script_or_argv, **RunSpec fields, lowers=, rootfs=, cache_dir=, executor=)``."""
    counter = iter(range(1000))

    def _run(
        command: str | tuple[str, ...],
        *,
        lowers: list[Path] | None = None,
        rootfs: RootfsMode = RootfsMode.AUTO,
        cache_dir: Path | None = None,
        run_executor: Executor | None = None,
        **fields: object,
    ) -> Step:
        argv = ("/bin/sh", "-c", command) if isinstance(command, str) else command
        fields.setdefault("env", (PATH,))
        spec = RunSpec(argv=argv, **fields)  # type: ignore[arg-type]
        step = Step(result=None)  # type: ignore[arg-type]
        step.result = run_step(
            spec,
            lowers=lowers or [base_root],
            state_dir=tmp_path / f"state{next(counter)}",
            cache_dir=cache_dir or tmp_path / "cache",
            rootfs=rootfs,
            executor=run_executor or executor,
            on_output=lambda stream, line: step.lines.append((stream, line)),
        )
        return step

    return _run
