"""Expanding and applying a Dockerfile takes time linear in its size.

No absolute timings: each case is timed at two sizes, n and 4n, and the larger must take
less than 10 times as long (linear work takes ~4 times as long, quadratic ~16 times). The
best of five runs (without the garbage collector) is compared, so that a busy machine does not decide the outcome.
The small size runs five times; the large one runs until one of its runs is under the
limit, at most five times (the best of five is under the limit exactly when one run is).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import pytest

from builder.dockerfile.shell_lex import Lexer
from builder.dockerfile.stages import plan_build
from builder.image import ImageState, assemble
from builder.steps.metadata import METADATA, apply_metadata

pytestmark = pytest.mark.slow

RUNS = 5
LIMIT = 10.0


def _best(fn: Callable[[], object], under: float = 0.0) -> float:
    """The shortest of ``RUNS`` runs of ``fn``; stops early once a run takes less than
    ``under`` seconds (the best of all runs would be under it too)."""
    best = float("inf")
    gc.collect()
    gc.disable()  # a collection falling into one run only is not the work being measured
    try:
        for _ in range(RUNS):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
            if best < under:
                break
    finally:
        gc.enable()
    return best


def _growth(make: Callable[[int], Callable[[], object]], n: int) -> float:
    """How many times longer the best run at 4n takes than the best run at n, or (as soon
    as it is known to be under LIMIT) the ratio of the first large run that is."""
    small, large = make(n), make(4 * n)
    baseline = max(_best(small), 1e-6)
    return _best(large, under=LIMIT * baseline) / baseline


WORDS: dict[str, Callable[[int], str]] = {
    "one long word": lambda n: "$A" + "x" * n,
    "many short words": lambda n: "$A" + "x " * (n // 2),
    "double-quoted": lambda n: '"$A' + "x" * n + '"',
    "single-quoted": lambda n: "$A'" + "x" * n + "'",
    "escapes": lambda n: "$A" + "\\x" * (n // 2),
    "variables": lambda n: "$A" * (n // 2),
    "long value split into words": lambda n: "$B",
    "nested defaults": lambda n: "${A:-" * (n // 128) + "x" + "}" * (n // 128),
}


@pytest.mark.parametrize("shape", sorted(WORDS))
def test_word_expansion_is_linear(shape: str) -> None:
    lex = Lexer()

    def make(n: int) -> Callable[[], object]:
        word = WORDS[shape](n)
        env = {"A": "a", "B": "b " * n}
        return lambda: lex.expand(word, env)

    assert _growth(make, 256 << 10) < LIMIT


INSTRUCTIONS: dict[str, Callable[[int], str]] = {
    "a long LABEL line": lambda n: f"LABEL a=$X{'x' * (n * 32)}\n",
    "many LABEL lines": lambda n: "".join(f"LABEL l{i}=$X{i}\n" for i in range(n)),
    "many ENV lines": lambda n: "".join(f"ENV e{i}=$X{i}\n" for i in range(n)),
    "many ARG lines": lambda n: "".join(f"ARG a{i}=$X{i}\n" for i in range(n)),
    "ENV and LABEL lines in turn": lambda n: "".join(
        f"ENV e{i}=$X{i}\nLABEL l{i}=$e{i}\n" for i in range(n // 2)),
}


@pytest.mark.parametrize("case", sorted(INSTRUCTIONS))
def test_planning_and_applying_a_stage_is_linear(case: str) -> None:
    def make(n: int) -> Callable[[], object]:
        text = "FROM scratch\nARG X=1\n" + INSTRUCTIONS[case](n)

        def build() -> object:
            plan = plan_build(text)
            state = ImageState.scratch()
            for ins in plan.stages[0].instructions[1:]:
                if isinstance(ins, METADATA):
                    apply_metadata(ins, state, "Dockerfile", [False], "")
            return assemble(state, "2024-01-01T00:00:00Z")

        return build

    assert _growth(make, 4000) < LIMIT
