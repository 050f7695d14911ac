"""``--cache-to`` / ``--cache-from``: two runners (two storage directories) sharing a
build cache, as CI jobs on fresh machines do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cache.remote import CacheSpecError, parse_cache_spec
from tests.helpers.cli import pybuild
from tests.helpers.store import stored

DOCKERFILE = """FROM {base}
COPY a.txt /a.txt
RUN cat /a.txt > /from-a.txt
COPY b.txt /b.txt
RUN cat /b.txt > /from-b.txt
"""


def _context(tmp_path: Path, base: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (ctx / "a.txt").write_text("a\n")
    (ctx / "b.txt").write_text("b\n")
    return ctx


TOC = "application/vnd.pybuild.layer.toc.v1+json"


@pytest.fixture(autouse=True)
def eager_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests follow a lazy layer fetched whole (as where FUSE is unusable);
    test_build_lazy_fuse.py follows the one a RUN reads through FUSE."""
    monkeypatch.setenv("PYBUILD_FUSE_DEVICE", "/nonexistent/fuse")


def step_layers(manifest: dict) -> list[str]:
    """A cache artifact's layer blobs, without the layers' TOCs (builder.lazyfs)."""
    return [d["digest"] for d in manifest["layers"] if d["mediaType"] != TOC]


def _build(storage: Path, ctx: Path, *args: str) -> tuple[dict[str, str], list[dict]]:
    """Build; returns step name -> "cached" | "ran", and the JSON events."""
    proc = pybuild("build", "--progress", "json", "--storage", str(storage), *args, str(ctx),
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    names = {e["step"]: e["name"] for e in events if e["event"] == "start"}
    status = {}
    for e in events:
        if e["event"] in ("cached", "done") and e["step"] in names:
            status[names[e["step"]]] = "cached" if e["event"] == "cached" else "ran"
    return status, events


def _cache_layers(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    return step_layers(manifest)


def _cache_keys(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    # the steps' entries (not the facts entries that COPY's lookups of the layers leave)
    return sorted(e["key"] for e in config["entries"] if e["instruction"] != "facts")


def _steps(status: dict[str, str], word: str) -> dict[str, str]:
    return {k: v for k, v in status.items() if word in k}


def test_parse_cache_spec() -> None:
    spec = parse_cache_spec("type=local,dest=/c,mode=max", export=True)
    assert (spec.type, spec.where, spec.mode) == ("local", "/c", "max")
    assert parse_cache_spec("type=local,src=/c", export=False).mode == "min"
    for bad in ("type=local", "type=nope,dest=/c", "type=local,dest=/c,mode=all",
                "type=local,dest", "localhost:5000/app@sha256:" + "0" * 64):
        with pytest.raises(CacheSpecError):
            parse_cache_spec(bad, export=True)
    # as buildx (and docker build --cache-from IMAGE): a bare value is a registry reference
    for export in (True, False):
        spec = parse_cache_spec("localhost:5000/app:cache", export=export)
        assert (spec.type, spec.where, spec.mode) == ("registry", "localhost:5000/app:cache", "min")


def test_local_cache_between_two_runners(busybox_ref: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, busybox_ref)
    cache = tmp_path / "cache"
    first, _ = _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache}")
    assert "cached" not in first.values()
    index = json.loads((cache / "index.json").read_text())
    manifest = json.loads((cache / "blobs/sha256" /
                           index["manifests"][0]["digest"].split(":")[1]).read_text())
    assert manifest["config"]["mediaType"] == "application/vnd.pybuild.buildcache.config.v1+json"
    assert len(step_layers(manifest)) == 4
    assert len(manifest["layers"]) == 8  # and the TOC of each
    (ctx / "b.txt").write_text("b changed\n")
    second, events = _build(tmp_path / "runner-b", ctx, "--explain", "--cache-from",
                            f"type=local,src={cache}")
    assert set(_steps(second, "a.txt").values()) == {"cached"}, second
    assert set(_steps(second, "b.txt").values()) == {"ran"}, second
    infos = [e["message"] for e in events if e["event"] == "info"]
    assert any(str(cache) in m and "importing cache" in m for m in infos), infos
    # --explain: the imported source that hit (the two steps before b.txt's COPY)
    assert f"cache hits from type=local,src={cache}: 2 steps" in infos, infos
    # only the layers of the steps that hit were copied into runner B's store
    assert len(stored(tmp_path / "runner-b", _cache_layers(cache))) == 2


def test_missing_cache_source_is_a_warning(busybox_ref: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, busybox_ref)
    status, events = _build(tmp_path / "s", ctx, "--cache-from",
                            f"type=local,src={tmp_path / 'nothing'}")
    assert "cached" not in status.values()
    assert any(e["event"] == "info" and e["message"].startswith("WARNING: --cache-from")
               for e in events)


def test_keys_do_not_depend_on_the_storage(busybox_ref: str, tmp_path: Path) -> None:
    """The same Dockerfile and context built in two storage directories (from two
    checkouts of it) export the same cache keys (mode=max), so one machine's cache serves
    another."""
    keys = []
    for name in ("one", "two"):
        ctx = _context(tmp_path / f"checkout-{name}", busybox_ref)
        dest = tmp_path / f"cache-{name}"
        _build(tmp_path / name, ctx, "--cache-to", f"type=local,dest={dest},mode=max")
        keys.append(_cache_keys(dest))
    assert keys[0] == keys[1] and len(keys[0]) == 4


@pytest.mark.parametrize("kind", ["pybuild", "distribution"])
def test_registry_cache_between_two_runners(kind: str, busybox_ref: str,
                                            tmp_path: Path) -> None:
    from testkit.registries import distribution_registry, pybuild_registry

    serve = pybuild_registry if kind == "pybuild" else distribution_registry
    ctx = _context(tmp_path, busybox_ref)
    with serve(tmp_path / "registry") as registry:
        ref = registry.ref("ci/app-cache", "main")
        local = tmp_path / "local-copy"  # --cache-to repeats: the same cache in a layout
        first, _ = _build(tmp_path / "runner-a", ctx, "--cache-to",
                          f"type=registry,ref={ref},mode=max", "--cache-to",
                          f"type=local,dest={local},mode=max")
        assert "cached" not in first.values()
        (ctx / "b.txt").write_text("b changed\n")
        second, events = _build(tmp_path / "runner-b", ctx, "--cache-from",
                                f"type=registry,ref={ref}")
    assert set(_steps(second, "a.txt").values()) == {"cached"}, second
    assert set(_steps(second, "b.txt").values()) == {"ran"}, second
    infos = [e["message"] for e in events if e["event"] == "info"]
    assert any(ref in m and "importing cache" in m for m in infos), infos
    # only the layers of the two steps that hit were pulled, of the cache's four
    layers = _cache_layers(local)
    assert len(layers) == 4 and len(stored(tmp_path / "runner-b", layers)) == 2


def test_unreachable_registry_cache(busybox_ref: str, tmp_path: Path) -> None:
    """As BuildKit: a --cache-from that fails is a warning; a --cache-to that fails fails
    the build unless ignore-error=true."""
    ctx = _context(tmp_path, busybox_ref)
    ref = "127.0.0.1:9/nothing/here:cache"
    status, events = _build(tmp_path / "s", ctx, "--cache-from", f"type=registry,ref={ref}",
                            "--cache-to", f"type=registry,ref={ref},ignore-error=true")
    assert "cached" not in status.values()
    warnings = [e["message"] for e in events if e["event"] == "info"
                and e["message"].startswith("WARNING:")]
    assert len(warnings) == 2 and "--cache-from" in warnings[0] and "--cache-to" in warnings[1]
    failed = pybuild("build", "--progress", "quiet", "--storage", str(tmp_path / "s"),
                     "--cache-to", f"type=registry,ref={ref}", str(ctx), timeout=300)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    errors = [x for x in failed.stderr.splitlines() if x.startswith("ERROR")]
    assert len(errors) == 1 and "--cache-to" in errors[0], failed.stderr


def test_mode_min_exports_the_final_stage_and_max_every_stage(busybox_ref: str,
                                                              tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref} AS tool\nRUN echo tool > /tool.txt\n"
        f"FROM {busybox_ref}\nCOPY --from=tool /tool.txt /tool.txt\nRUN cat /tool.txt > /x\n")
    counts = {}
    for mode in ("min", "max"):
        dest = tmp_path / mode
        _build(tmp_path / "storage", ctx, "--cache-to", f"type=local,dest={dest},mode={mode}")
        counts[mode] = _cache_keys(dest)
    # min: COPY --from and RUN of the final stage; max: the tool stage's RUN too
    assert len(counts["min"]) == 2 and len(counts["max"]) == 3
    assert set(counts["min"]) < set(counts["max"])
