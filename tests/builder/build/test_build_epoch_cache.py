"""A new SOURCE_DATE_EPOCH keeps the build cache, as BuildKit's does: a step's key holds
the epoch only when the step sees it (``ARG SOURCE_DATE_EPOCH``), the cache keeps the
layers with their files' own times, and the image gets them clamped to the epoch: the
same digests as a build with that epoch and no cache."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import pybuild
from tests.helpers.store import stored

E1, E2 = 1_600_000_000, 1_700_000_000
E2_TEXT = "2023-11-14T22:13:20Z"
LAST = 'RUN echo "$SOURCE_DATE_EPOCH" > /srv/sde.txt'
TOOLS = ("RUN mkdir -p /srv/d && echo tool > /srv/d/tool.txt && ln -s tool.txt /srv/d/link "
         "&& rm -f /etc/hostname")


@pytest.fixture(autouse=True)
def no_epoch_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    # a layer left at its cache source is fetched whole (as where FUSE is unusable)
    monkeypatch.setenv("PYBUILD_FUSE_DEVICE", "/nonexistent/fuse")


def _ran(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.split("] ", 1)[1] for s in result.ran_steps if "] " in s and "FROM" not in s]


def _clamp_entries(storage: Path) -> int:
    with sqlite3.connect(storage / "builder/cache.db") as db:
        return int(db.execute("SELECT count(*) FROM steps WHERE instruction='clamp'")
                   .fetchone()[0])


def test_new_epoch_reuses_every_step_that_cannot_see_it(context_of, build,
                                                        tmp_path: Path) -> None:
    ctx = context_of("epoch-cache")
    cold = build(ctx, storage=tmp_path / "cold", source_date_epoch=E2)
    storage = tmp_path / "s"
    first = build(ctx, storage=storage, source_date_epoch=E1)
    second = build(ctx, storage=storage, source_date_epoch=E2, local=tmp_path / "out")
    # only the step that declares ARG SOURCE_DATE_EPOCH runs again
    assert _ran(second) == [LAST]
    assert len(second.cached_steps) == len(_ran(first)) - 1
    assert second.image.digest == cold.image.digest
    assert second.image.manifest_bytes == cold.image.manifest_bytes
    config = json.loads(second.image.config_bytes)
    assert {h["created"] for h in config["history"][1:]} == {E2_TEXT}
    assert (tmp_path / "out/srv/sde.txt").read_text() == f"{E2}\n"
    # the clamped layers are remembered: the same epoch again rewrites nothing
    entries = _clamp_entries(storage)
    again = build(ctx, storage=storage, source_date_epoch=E2)
    assert again.image.digest == cold.image.digest and _ran(again) == []
    assert _clamp_entries(storage) == entries
    # and the first epoch is still there, and gives what it gave
    back = build(ctx, storage=storage, source_date_epoch=E1)
    assert back.image.digest == first.image.digest and _ran(back) == []


def test_rewriting_cached_layers_for_a_new_epoch_is_a_step(context_of, tmp_path: Path) -> None:
    """As BuildKit's exporter shows its ``rewriting layers with source-date-epoch`` line: a
    long rewrite is a step of its own (a log line per layer, DONE), in plain lines and
    JSON events alike; a build with nothing to rewrite shows none."""
    ctx = context_of("epoch-cache")
    storage = tmp_path / "s"
    common = ("build", "--storage", str(storage))
    assert pybuild(*common, "--source-date-epoch", str(E1), str(ctx),
                   timeout=300).returncode == 0
    plain = pybuild(*common, "--progress", "plain", "--source-date-epoch", str(E2), str(ctx),
                    timeout=300)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stderr.splitlines()
    title = f"rewriting layers with source-date-epoch {E2} ({E2_TEXT[:10]} 22:13:20 +0000 UTC)"
    [start] = [x for x in lines if x.endswith(f" {title}")]
    n = start.split()[0]
    logged = [x for x in lines if x.startswith(f"{n} ") and " sha256:" in x]
    assert logged and any(" done: sha256:" in x for x in logged), lines
    assert any(x.startswith(f"{n} DONE ") for x in lines), lines
    events = pybuild(*common, "--progress", "json", "--source-date-epoch", str(E1 + 1),
                     str(ctx), timeout=300)
    assert events.returncode == 0, events.stderr
    parsed = [json.loads(x) for x in events.stderr.splitlines() if x.startswith("{")]
    [step] = [e["step"] for e in parsed if e["event"] == "start"
              and e["name"].startswith(f"rewriting layers with source-date-epoch {E1 + 1} (")]
    assert [e["event"] for e in parsed if e.get("step") == step][-1] == "done"
    assert any(e["event"] == "log" and e["step"] == step for e in parsed)
    again = pybuild(*common, "--progress", "plain", "--source-date-epoch", str(E2), str(ctx),
                    timeout=300)
    assert again.returncode == 0 and "rewriting layers" not in again.stderr


def _mtimes(layout: Path, digest) -> set[int]:  # type: ignore[no-untyped-def]
    data = gzip.decompress((layout / "blobs/sha256" / digest.encoded).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {int(m.mtime) for m in tf.getmembers()}


def test_no_epoch_after_an_epoch_reuses_the_steps(context_of, build, tmp_path: Path) -> None:
    """Without an epoch the cached layers keep their files' own times (not the epoch's
    of the build that cached them)."""
    ctx = context_of("epoch-cache")
    storage = tmp_path / "s"
    first = build(ctx, storage=storage, source_date_epoch=E1, oci=tmp_path / "a")
    plain = build(ctx, storage=storage, oci=tmp_path / "b")
    assert _ran(plain) == [LAST]
    run = first.image.manifest.layers[-2]  # RUN echo app ... (/srv/old.txt: 1000)
    assert _mtimes(tmp_path / "a", run.digest) == {1000, E1}
    times = _mtimes(tmp_path / "b", plain.image.manifest.layers[-2].digest)
    assert 1000 in times and max(times) > E1


def _build(storage: Path, ctx: Path, *args: str) -> tuple[dict[str, str], list[dict[str, Any]],
                                                       str]:
    """Build with --explain; returns step name -> "cached" | "ran", the JSON events and
    the image digest."""
    proc = pybuild("build", "--progress", "json", "--explain", "--storage", str(storage),
                   *args, str(ctx), timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    names = {e["step"]: e["name"] for e in events if e["event"] == "start"}
    status = {names[e["step"]]: "cached" if e["event"] == "cached" else "ran"
              for e in events if e["event"] in ("cached", "done") and e["step"] in names}
    return status, events, proc.stdout.strip().splitlines()[-1]


def _ran_names(status: dict[str, str]) -> list[str]:
    return [k.split("] ", 1)[1] for k, v in status.items()
            if v == "ran" and "] " in k and "FROM" not in k]


def test_explain_names_the_epoch_only_where_a_step_sees_it(context_of, tmp_path: Path) -> None:
    ctx = context_of("epoch-cache")
    _build(tmp_path / "s", ctx, "--source-date-epoch", str(E1))
    status, events, _ = _build(tmp_path / "s", ctx, "--source-date-epoch", str(E2))
    assert _ran_names(status) == [LAST]
    reasons = [e["reason"] for e in events if e["event"] == "explain" and "reason" in e]
    assert reasons == ["inputs changed: env:SOURCE_DATE_EPOCH"]


def test_remote_cache_made_with_another_epoch(context_of, tmp_path: Path) -> None:
    """A CI runner with a fresh storage, the cache a build of the previous commit
    exported (mode=max): every step but the one that reads the epoch hits, and the image
    is the one a build with no cache makes."""
    ctx = context_of("epoch-cache")
    _, _, cold = _build(tmp_path / "cold", ctx, "--source-date-epoch", str(E2))
    cache = tmp_path / "cache"
    _, _, made = _build(tmp_path / "a", ctx, "--source-date-epoch", str(E1),
                        "--cache-to", f"type=local,dest={cache},mode=max")
    status, _, digest = _build(tmp_path / "b", ctx, "--source-date-epoch", str(E2),
                               "--cache-from", f"type=local,src={cache}")
    assert _ran_names(status) == [LAST]
    assert digest == cold
    # the same epoch: the clamped layers came with the cache, nothing is rewritten
    status, events, digest = _build(tmp_path / "c", ctx, "--source-date-epoch", str(E1),
                                    "--cache-from", f"type=local,src={cache}")
    assert _ran_names(status) == [] and digest == made
    infos = [e["message"] for e in events if e["event"] == "info"]
    assert f"importing cache from type=local,src={cache}: 5 steps" in infos, infos
    assert f"cache hits from type=local,src={cache}: 5 steps" in infos, infos
    steps, clamped = _cache_layers(cache)
    assert steps and clamped
    assert stored(tmp_path / "c", steps) == []  # no layer fetched to be rewritten


def _cache_layers(layout: Path) -> tuple[list[str], list[str]]:
    """The layers of a cache's step entries, and of its clamped-layer entries."""
    blobs = layout / "blobs/sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    layers: dict[str, list[str]] = {"step": [], "clamp": []}
    for e in config["entries"]:
        if e["layer"]["digest"] and e["instruction"] != "facts":
            layers["clamp" if e["instruction"] == "clamp" else "step"].append(
                e["layer"]["digest"])
    return layers["step"], layers["clamp"]


def _layers(addr: str, tag: str) -> list[str]:
    from testkit.registries import get_manifest

    return [d["digest"] for d in json.loads(get_manifest(addr, "ci/app", tag).body)["layers"]]


def test_inline_cache_with_an_epoch(context_of, tmp_path: Path) -> None:
    """``type=inline`` carries the image's own layers, clamped to its epoch: a build with
    that epoch reuses them; one with another epoch runs the steps (the files' own times
    are not in the image) and gives what a build with no cache gives."""
    from testkit.registries import distribution_registry

    ctx = context_of("epoch-cache")
    _, _, cold = _build(tmp_path / "cold", ctx, "--source-date-epoch", str(E2))
    with distribution_registry(tmp_path / "registry") as registry:
        image = f"{registry.addr}/ci/app:1"
        _build(tmp_path / "a", ctx, "--source-date-epoch", str(E1), "-t", image, "--push",
               "--cache-to", "type=inline")
        status, _, _ = _build(tmp_path / "b", ctx, "--source-date-epoch", str(E1),
                              "--cache-from", f"type=registry,ref={image}",
                              "-t", f"{registry.addr}/ci/app:2", "--push")
        # (inline is mode=min: the other stage is not in it)
        assert _ran_names(status) == [TOOLS]
        assert _layers(registry.addr, "2") == _layers(registry.addr, "1")
        status, events, digest = _build(tmp_path / "c", ctx, "--source-date-epoch", str(E2),
                                        "--cache-from", f"type=registry,ref={image}")
        assert digest == cold
        assert 'COPY app.txt /srv/' in _ran_names(status)
        reasons = [e["reason"] for e in events if e["event"] == "explain" and "reason" in e]
        assert f"its cached layer (from an inline cache) has the file times of " \
               f"SOURCE_DATE_EPOCH={E1}, not of this build's epoch ({E2})" in reasons, reasons
