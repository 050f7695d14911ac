"""The remote build cache between two runners (two storage directories), against real
registries seen through a counting proxy: ``type=inline``, lazy layers (a fully cached
push moves no layer), ``cache-mounts=true`` and ``--explain``'s cache sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.docker_engine import DockerEngine
from testkit.registries import distribution_registry, get_manifest, pybuild_registry
from tests.builder.build.test_build_remote_cache import (  # noqa: F401 (a fixture)
    _build,
    _context,
    eager_layers,
)
from tests.builder.build.test_build_remote_cache import (
    step_layers as artifact_layers,
)
from tests.helpers.cli import pybuild
from tests.helpers.counting_proxy import counting_proxy
from tests.helpers.store import stored

REGISTRIES = {"pybuild": pybuild_registry, "distribution": distribution_registry}


def _manifest(addr: str, repo: str, tag: str) -> tuple[dict, str]:
    got = get_manifest(addr, repo, tag)
    assert got.status == 200, got
    return json.loads(got.body), got.headers.get("Docker-Content-Digest", "")


def _steps(status: dict[str, str], word: str) -> set[str]:
    return {v for k, v in status.items() if word in k}


def _dockerfile_steps(status: dict[str, str]) -> set[str]:
    """How the Dockerfile's steps after FROM went (not FROM, pushes or outputs)."""
    return {v for k, v in status.items() if k.startswith("[") and "] FROM " not in k}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_inline_cache_between_two_runners(kind: str, busybox_ref: str, tmp_path: Path,
                                          docker_engine: DockerEngine) -> None:
    """Runner A pushes an image with its cache inline; runner B, after a change to b.txt,
    reads the cache from that image and runs only the steps from b.txt's COPY on; Docker
    runs what runner B pushed."""
    ctx = _context(tmp_path, busybox_ref)
    with REGISTRIES[kind](tmp_path / "registry") as registry, \
            counting_proxy(registry.addr) as proxy:
        first = f"{proxy.addr}/ci/app:1"
        status, _ = _build(tmp_path / "runner-a", ctx, "-t", first, "--push",
                           "--cache-to", "type=inline")
        assert "cached" not in status.values()
        manifest, _ = _manifest(proxy.addr, "ci/app", "1")
        config = json.loads(get_manifest(proxy.addr, "ci/app", "1").body)["config"]
        from testkit.registries import http

        cfg = json.loads(http(proxy.addr, "GET",
                              f"/v2/ci/app/blobs/{config['digest']}").body)
        inline = cfg["dev.pybuild.cache.v1"]
        steps = [e for e in inline["entries"] if e["instruction"] != "facts"]
        assert len(steps) == 4  # mode=min: the final stage's four steps
        layers = {d["digest"] for d in manifest["layers"]}
        assert {e["layer"]["digest"] for e in steps} <= layers

        (ctx / "b.txt").write_text("b changed\n")
        second = f"{proxy.addr}/ci/app:2"
        status, events = _build(tmp_path / "runner-b", ctx, "--cache-from",
                                f"type=registry,ref={first}", "-t", second, "--push")
        assert _steps(status, "a.txt") == {"cached"}, status
        assert _steps(status, "b.txt") == {"ran"}, status
        infos = [e["message"] for e in events if e["event"] == "info"]
        assert f"importing cache from type=registry,ref={first}: 4 steps" in infos, infos
        try:
            docker_engine.run("pull", second)
            ran = docker_engine.run("run", "--rm", "--network", "none", second,
                                    "cat", "/from-a.txt", "/from-b.txt")
            assert ran.stdout == "a\nb changed\n"
        finally:
            docker_engine.run("rmi", "-f", second, check=False)


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_fully_cached_push_moves_no_layer(kind: str, busybox_ref: str, tmp_path: Path,
                                          docker_engine: DockerEngine) -> None:
    """Runner B, with an empty store and runner A's cache (another repository of the same
    registry), builds the same context and pushes it under two names: every step is
    CACHED, no layer blob is GET or uploaded (they exist, or are mounted from the cache's
    repository or the first name's), and runner B's store never holds them."""
    ctx = _context(tmp_path, busybox_ref)
    with REGISTRIES[kind](tmp_path / "registry") as registry, \
            counting_proxy(registry.addr) as proxy:
        cache = f"{proxy.addr}/ci/cache:main"
        _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=registry,ref={cache},mode=max",
               "-t", f"{proxy.addr}/ci/app:1", "--push")
        image, digest_a = _manifest(proxy.addr, "ci/app", "1")
        layers = {d["digest"] for d in image["layers"]}
        cache_art, _ = _manifest(proxy.addr, "ci/cache", "main")
        step_layers = set(artifact_layers(cache_art))
        assert len(step_layers) == 4 and step_layers < layers
        proxy.log.clear()

        mirror = f"{proxy.addr}/ci/mirror:2"
        status, events = _build(tmp_path / "runner-b", ctx, "--explain", "--cache-from",
                                f"type=registry,ref={cache}", "-t", f"{proxy.addr}/ci/app:2",
                                "-t", mirror, "--push")
        served = list(proxy.log)
        assert _dockerfile_steps(status) == {"cached"}, status
        assert proxy.blob_gets(layers) == [], served
        uploads = [s for s in served if s.method in ("PATCH", "PUT") and "/blobs/" in s.path]
        assert uploads == [], served
        mounts = [s for s in served if s.method == "POST" and "mount=" in s.path]
        assert len(mounts) == len(layers) + 1  # every layer and the config, into ci/mirror
        assert _manifest(proxy.addr, "ci/mirror", "2")[1] == digest_a
        assert _manifest(proxy.addr, "ci/app", "2")[1] == digest_a
        assert stored(tmp_path / "runner-b", sorted(step_layers)) == []
        infos = [e["message"] for e in events if e["event"] == "info"]
        assert any("not stored in the local image store" in m for m in infos), infos
        hits = [e["hit"] for e in events if e["event"] == "explain" and "hit" in e]
        assert hits == [f"type=registry,ref={cache}"] * 4, events
        try:
            ran = docker_engine.run("run", "--rm", "--network", "none", mirror,
                                    "cat", "/from-b.txt")
            assert ran.stdout == "b\n"
        finally:
            docker_engine.run("rmi", "-f", mirror, check=False)


def test_a_registry_base_stays_in_the_registry_too(busybox_ref: str, tmp_path: Path) -> None:
    """With --cache-from, a registry base the runner does not have is read as manifest and
    config only: a fully cached build pushed to the base's registry GETs no blob but
    configs, and a changed step fetches the base layer it runs on."""
    from tests.helpers.cli import pybuild

    ctx = _context(tmp_path, busybox_ref)
    layout = busybox_ref[len("oci-layout://"):]
    with pybuild_registry(tmp_path / "registry") as registry, \
            counting_proxy(registry.addr) as proxy:
        base = f"{proxy.addr}/library/busybox:1"
        copied = pybuild("copy", "--storage", str(tmp_path / "copier"), f"oci:{layout}", base,
                         timeout=120)
        assert copied.returncode == 0, copied.stderr
        (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace(
            busybox_ref, base))
        cache = f"{proxy.addr}/ci/cache:main"
        _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=registry,ref={cache},mode=max",
               "-t", f"{proxy.addr}/ci/app:1", "--push")
        image, digest_a = _manifest(proxy.addr, "ci/app", "1")
        layers = {d["digest"] for d in image["layers"]}
        proxy.log.clear()
        status, events = _build(tmp_path / "runner-b", ctx, "--cache-from",
                                f"type=registry,ref={cache}", "-t", f"{proxy.addr}/ci/app:2",
                                "--push")
        assert _dockerfile_steps(status) == {"cached"}, status
        assert proxy.blob_gets(layers) == [], proxy.log
        assert _manifest(proxy.addr, "ci/app", "2")[1] == digest_a
        assert stored(tmp_path / "runner-b", sorted(layers)) == []
        infos = [e["message"] for e in events if e["event"] == "info"]
        assert any(m.startswith(f"using {base} (sha256:") for m in infos), infos
        (ctx / "b.txt").write_text("b changed\n")
        status, _ = _build(tmp_path / "runner-c", ctx, "--cache-from",
                           f"type=registry,ref={cache}")
        assert _steps(status, "b.txt") == {"ran"}, status
        # the base layer and the two cached ones below b.txt's RUN, nothing else
        assert len(stored(tmp_path / "runner-c", sorted(layers))) == 3


def test_a_step_that_runs_fetches_only_what_it_needs(busybox_ref: str, tmp_path: Path) -> None:
    """A change to b.txt: runner B fetches the two cached layers below the RUN that must
    run (it needs their files), and none of the cache's other layers."""
    ctx = _context(tmp_path, busybox_ref)
    cache = tmp_path / "cache"
    _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    index = json.loads((cache / "index.json").read_text())
    art = json.loads((cache / "blobs/sha256" /
                      index["manifests"][0]["digest"].split(":")[1]).read_text())
    all_layers = artifact_layers(art)
    # unchanged: nothing runs, nothing is fetched
    status, _ = _build(tmp_path / "runner-b", ctx, "--cache-from", f"type=local,src={cache}")
    assert _dockerfile_steps(status) == {"cached"}
    assert stored(tmp_path / "runner-b", all_layers) == []
    (ctx / "b.txt").write_text("b changed\n")
    status, _ = _build(tmp_path / "runner-c", ctx, "--cache-from", f"type=local,src={cache}")
    assert _steps(status, "b.txt") == {"ran"}
    assert len(stored(tmp_path / "runner-c", all_layers)) == 2
    # an output that holds the image's files fetches the rest
    out = tmp_path / "out"
    (ctx / "b.txt").write_text("b\n")
    status, _ = _build(tmp_path / "runner-d", ctx, "--cache-from", f"type=local,src={cache}",
                       "-o", f"type=local,dest={out}")
    assert _dockerfile_steps(status) == {"cached"}
    assert (out / "from-b.txt").read_text() == "b\n"
    assert len(stored(tmp_path / "runner-d", all_layers)) == 4


MULTI_STAGE = """FROM {base} AS build
COPY a.txt /src/a.txt
RUN cat /src/a.txt > /out.txt
FROM {base}
COPY --from=build /out.txt /app/out.txt
RUN --mount=type=bind,from=build,source=/out.txt,target=/in.txt cat /in.txt > /bound
COPY b.txt /b.txt
RUN cat /app/out.txt /b.txt > /result
"""


def test_copy_from_a_cached_stage_fetches_none_of_its_layers(busybox_ref: str,
                                                            tmp_path: Path) -> None:
    """The hashes COPY --from and RUN --mount=from read from another stage are facts of
    that stage's key: with the cache imported, the build stage's layers stay where the
    cache is, even when a later step of the final stage runs."""
    ctx = _context(tmp_path, busybox_ref)
    (ctx / "Dockerfile").write_text(MULTI_STAGE.format(base=busybox_ref))
    cache = tmp_path / "cache"
    _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache},mode=max")
    index = json.loads((cache / "index.json").read_text())
    art = json.loads((cache / "blobs/sha256" /
                      index["manifests"][0]["digest"].split(":")[1]).read_text())
    all_layers = artifact_layers(art)
    assert len(all_layers) == 6
    status, _ = _build(tmp_path / "runner-b", ctx, "--cache-from", f"type=local,src={cache}")
    assert _dockerfile_steps(status) == {"cached"}, status
    assert stored(tmp_path / "runner-b", all_layers) == []
    (ctx / "b.txt").write_text("b changed\n")
    out = tmp_path / "out"
    status, _ = _build(tmp_path / "runner-c", ctx, "--cache-from", f"type=local,src={cache}")
    assert {v for k, v in status.items() if "[build " in k and "] FROM " not in k} == \
        {"cached"}, status
    assert _steps(status, "/result") == {"ran"}, status
    # only the two layers below the RUN that ran; the build stage's stay away
    assert len(stored(tmp_path / "runner-c", all_layers)) == 2
    status, _ = _build(tmp_path / "runner-c", ctx, "-o", f"type=local,dest={out}")
    assert (out / "result").read_text() == "a\nb changed\n"
    assert (out / "bound").read_text() == "a\n"


def test_explain_names_the_cache_source_of_each_step(busybox_ref: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, busybox_ref)
    cache = tmp_path / "cache"
    _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache}")
    (ctx / "b.txt").write_text("b changed\n")
    source = f"type=local,src={cache}"
    _, events = _build(tmp_path / "runner-b", ctx, "--explain", "--cache-from", source)
    names = {e["step"]: e["name"] for e in events if e["event"] == "start"}
    said = {names[e["step"]]: e.get("hit") or e["reason"] for e in events
            if e["event"] == "explain"}
    assert {v for k, v in said.items() if "a.txt" in k} == {source}, said
    b_steps = {k: v for k, v in said.items() if "b.txt" in k}
    assert len(b_steps) == 2 and source not in b_steps.values(), said
    assert any("inputs" in v or "instruction" in v or "previous step" in v
               for v in b_steps.values()), said
    _, events = _build(tmp_path / "runner-b", ctx, "--explain", "--cache-from", source)
    hits = [e["hit"] for e in events if e["event"] == "explain"]
    assert hits == ["local"] * 4, events


CACHE_MOUNT_DOCKERFILE = """FROM {base}
COPY a.txt /a.txt
RUN --mount=type=cache,target=/var/cache/dl,id=downloads,uid=1000,gid=1000 \\
    cp /a.txt /var/cache/dl/from-$(cat /a.txt) && ls /var/cache/dl > /seen \\
    && stat -c %u:%g /var/cache/dl > /owner
"""


@pytest.mark.parametrize("where", ["local", "pybuild"])
def test_cache_mounts_travel_with_the_cache(where: str, busybox_ref: str,
                                            tmp_path: Path) -> None:
    """Runner A's RUN writes into its cache mount; runner B (fresh store), after a change
    that makes the step run again, sees those files in its cache mount."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CACHE_MOUNT_DOCKERFILE.format(base=busybox_ref))
    (ctx / "a.txt").write_text("one")

    def run(registry: str | None) -> None:
        spec = f"type=local,dest={tmp_path / 'cache'}" if registry is None \
            else f"type=registry,ref={registry}/ci/cache:main"
        _build(tmp_path / "runner-a", ctx, "--cache-to", f"{spec},cache-mounts=true")
        (ctx / "a.txt").write_text("two")
        src = spec.replace("dest=", "src=")
        out = tmp_path / "out"
        status, events = _build(tmp_path / "runner-b", ctx, "--cache-from", src,
                                "-o", f"type=local,dest={out}")
        assert _steps(status, "RUN") == {"ran"}, status
        assert (out / "seen").read_text().split() == ["from-one", "from-two"]
        assert (out / "owner").read_text().strip() == "1000:1000"
        infos = [e["message"] for e in events if e["event"] == "info"]
        assert any("1 cache mounts" in m and "importing" in m for m in infos), infos

    if where == "local":
        run(None)
        # runner C: every step cached, so no cache directory here: the imported cache is
        # exported again as it came, and runner D still finds runner A's files
        again = tmp_path / "cache-again"
        (ctx / "a.txt").write_text("one")
        status, events = _build(tmp_path / "runner-c", ctx, "--cache-from",
                                f"type=local,src={tmp_path / 'cache'}", "--cache-to",
                                f"type=local,dest={again},mode=max,cache-mounts=true")
        assert _dockerfile_steps(status) == {"cached"}, status
        assert any(e["message"].startswith("exported cache") and "1 cache mounts"
                   in e["message"] for e in events if e["event"] == "info"), events
        (ctx / "a.txt").write_text("three")
        out = tmp_path / "out-d"
        _build(tmp_path / "runner-d", ctx, "--cache-from", f"type=local,src={again}",
               "-o", f"type=local,dest={out}")
        assert (out / "seen").read_text().split() == ["from-one", "from-three"]
    else:
        with pybuild_registry(tmp_path / "registry") as registry:
            run(registry.addr)


def test_inline_refuses_what_it_cannot_carry(busybox_ref: str, tmp_path: Path) -> None:
    from builder.cache.remote import CacheSpecError, parse_cache_spec

    assert parse_cache_spec("type=inline", export=True).type == "inline"
    for bad in ("type=inline,mode=max", "type=inline,cache-mounts=true"):
        with pytest.raises(CacheSpecError):
            parse_cache_spec(bad, export=True)
    with pytest.raises(CacheSpecError, match="type=registry,ref=IMAGE"):
        parse_cache_spec("type=inline", export=False)


def test_a_hit_whose_source_lost_its_layer_runs(busybox_ref: str, tmp_path: Path) -> None:
    """An imported entry whose layer its source no longer holds is a miss: the step runs,
    and --explain says why."""
    ctx = _context(tmp_path, busybox_ref)
    cache = tmp_path / "cache"
    _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache}")
    index = json.loads((cache / "index.json").read_text())
    blobs = cache / "blobs/sha256"
    art = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / art["config"]["digest"].split(":")[1]).read_text())
    first = next(e for e in config["entries"] if e["instruction"] != "facts"
                 and '"COPY"' in e["instruction"] and "a.txt" in e["instruction"])
    (blobs / first["layer"]["digest"].split(":")[1]).unlink()
    status, events = _build(tmp_path / "runner-b", ctx, "--explain", "--cache-from",
                            f"type=local,src={cache}")
    assert _steps(status, "COPY a.txt") == {"ran"}, status
    reasons = [e.get("reason", "") for e in events if e["event"] == "explain"]
    assert any("no longer holds its layer" in r for r in reasons), reasons


def test_inline_cache_of_a_multi_platform_index(tmp_path: Path) -> None:
    """type=inline on a two-platform build: each platform's image carries its cache; the
    index imported on runner B gives both, and the fully cached index is pushed again
    (lazily) as the same index."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n")
    (ctx / "a.txt").write_text("a\n")
    (ctx / "b.txt").write_text("b\n")
    platforms = ("--platform", "linux/amd64,linux/arm64")
    with pybuild_registry(tmp_path / "registry") as registry:
        first = registry.ref("ci/multi", "1")
        _build(tmp_path / "runner-a", ctx, *platforms, "--cache-to", "type=inline",
               "-t", first, "--push")
        index, digest_a = _manifest(registry.addr, "ci/multi", "1")
        assert len(index["manifests"]) == 2
        status, events = _build(tmp_path / "runner-b", ctx, *platforms, "--cache-from",
                                f"type=registry,ref={first}", "--cache-to", "type=inline",
                                "-t", registry.ref("ci/multi", "2"), "--push")
        assert _dockerfile_steps(status) == {"cached"}, status
        infos = [e["message"] for e in events if e["event"] == "info"]
        assert f"importing cache from type=registry,ref={first}: 4 steps" in infos, infos
        assert _manifest(registry.addr, "ci/multi", "2")[1] == digest_a


def test_a_push_to_another_registry_streams_cached_layers(busybox_ref: str,
                                                          tmp_path: Path) -> None:
    """Cache in one registry, image pushed to another: the cached layers are streamed
    from the first to the second (each GET once), never stored on the runner; the cache
    exported to the second registry too is complete."""
    ctx = _context(tmp_path, busybox_ref)
    with pybuild_registry(tmp_path / "cache-registry") as one, \
            distribution_registry(tmp_path / "image-registry") as two, \
            counting_proxy(one.addr) as proxy:
        cache = f"{proxy.addr}/ci/cache:main"
        _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=registry,ref={cache},mode=max")
        art, _ = _manifest(proxy.addr, "ci/cache", "main")
        step_layers = set(artifact_layers(art))
        proxy.log.clear()
        target = two.ref("ci/app", "1")
        status, _ = _build(tmp_path / "runner-b", ctx, "--cache-from",
                           f"type=registry,ref={cache}", "--cache-to",
                           f"type=registry,ref={two.ref('ci/cache', 'main')},mode=max",
                           "-t", target, "--push")
        assert _dockerfile_steps(status) == {"cached"}, status
        gets = proxy.blob_gets(step_layers)
        assert sorted(s.path.rsplit("/", 1)[-1] for s in gets) == sorted(step_layers)
        assert stored(tmp_path / "runner-b", sorted(step_layers)) == []
        image, _ = _manifest(two.addr, "ci/app", "1")
        assert step_layers < {d["digest"] for d in image["layers"]}
        copied, _ = _manifest(two.addr, "ci/cache", "main")
        assert set(artifact_layers(copied)) == step_layers
        # the layers' TOCs travel too (streamed from the first registry, as the layers)
        assert {d["digest"] for d in copied["layers"]} == {d["digest"] for d in art["layers"]}
        # runner C reads the copy in the second registry and runs nothing
        status, _ = _build(tmp_path / "runner-c", ctx, "--cache-from",
                           f"type=registry,ref={two.ref('ci/cache', 'main')}")
        assert _dockerfile_steps(status) == {"cached"}, status


@pytest.mark.parametrize("last", ["RUN cat /b.txt > /x", "COPY --link a.txt /again.txt"])
def test_mode_min_follows_the_chain_through_link_steps(last: str, busybox_ref: str,
                                                       tmp_path: Path) -> None:
    """A COPY --link step's key leaves its parent out; mode=min (and inline) still export
    every step of the final stage, and a second runner hits them all."""
    from tests.builder.build.test_build_remote_cache import _cache_keys

    ctx = _context(tmp_path, busybox_ref)
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY a.txt /a.txt\n"
                                    f"COPY --link b.txt /b.txt\n{last}\n")
    cache = tmp_path / "cache"
    _build(tmp_path / "runner-a", ctx, "--cache-to", f"type=local,dest={cache}")
    assert len(_cache_keys(cache)) == 3
    status, _ = _build(tmp_path / "runner-b", ctx, "--cache-from", f"type=local,src={cache}")
    assert _dockerfile_steps(status) == {"cached"}, status


CI_MULTI_STAGE = """FROM {base} AS build
COPY src.txt /src/src.txt
RUN mkdir -p /dist && cp /src/src.txt /dist/app.txt
FROM {base}
WORKDIR /app
RUN head -c 3000000 /dev/urandom > /deps.bin && mkdir -p /app/dist \\
    && chmod 0750 /app/dist
COPY --from=build /dist/ ./dist/
"""


def test_copy_onto_a_cached_step_fetches_none_of_its_layers(busybox_ref: str,
                                                            tmp_path: Path) -> None:
    """The CI idiom: the final stage is a cached dependency step plus a COPY --from of
    a build stage that runs again. Runner B reads the directories the COPY copies up from
    runner A's facts: the dependency layer stays in the registry (no GET of it, far fewer
    bytes than it holds) and is mounted into the pushed image, whose COPY layer keeps the
    copied-up directory's mode."""
    import gzip
    import io
    import tarfile

    from testkit.registries import http

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CI_MULTI_STAGE.format(base=busybox_ref))
    (ctx / "src.txt").write_text("v1\n")
    with distribution_registry(tmp_path / "registry") as registry, \
            counting_proxy(registry.addr) as proxy:
        cache = f"type=registry,ref={proxy.addr}/ci/app:buildcache"
        job = ("--cache-from", cache, "--cache-to", f"{cache},mode=max",
               "-t", f"{proxy.addr}/ci/app:latest", "--push")
        _build(tmp_path / "runner-a", ctx, *job)
        deps = max(_manifest(proxy.addr, "ci/app", "latest")[0]["layers"],
                   key=lambda d: d["size"])
        assert deps["size"] > 3_000_000
        (ctx / "src.txt").write_text("v2\n")
        proxy.log.clear()
        status, _ = _build(tmp_path / "runner-b", ctx, *job)
        served = list(proxy.log)
        assert _steps(status, "urandom") == {"cached"}, status
        assert _steps(status, "COPY --from=build") == {"ran"}, status
        assert proxy.blob_gets({deps["digest"]}) == [], served
        pulled = sum(s.body_bytes for s in served if s.method == "GET")
        assert pulled < deps["size"] // 4, served
        assert stored(tmp_path / "runner-b", [deps["digest"]]) == []
        image, _ = _manifest(proxy.addr, "ci/app", "latest")
        assert deps in image["layers"]
        top = http(proxy.addr, "GET", f"/v2/ci/app/blobs/{image['layers'][-1]['digest']}")
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(top.body))) as tar:
            members = {m.name.rstrip("/"): m for m in tar.getmembers()}
            assert tar.extractfile(members["app/dist/app.txt"]).read() == b"v2\n"  # type: ignore[union-attr]
        assert members["app/dist"].mode == 0o750  # copied up from the dependency layer


def test_buildkit_inline_cache_is_named_in_the_warning(tmp_path: Path) -> None:
    """An image built with BuildKit's BUILDKIT_INLINE_CACHE=1 carries its cache in the
    config's ``moby.buildkit.cache.v0``: as a --cache-from it is a warning saying so (its
    keys are BuildKit's), not 'no inline cache'; the build goes on without it."""
    from testkit.images import Image, sha256_digest, write_oci_layout

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []},
                         "moby.buildkit.cache.v0": "eyJsYXllcnMiOltdfQ=="}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(config), "size": len(config)},
        "layers": []}).encode()
    layout = write_oci_layout(Image(manifest, config, ()), tmp_path / "layout")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL ok=1\n")
    with pybuild_registry(tmp_path / "registry") as registry:
        ref = registry.ref("ci/buildkit", "1")
        copied = pybuild("copy", f"oci:{layout}:latest", f"docker://{ref}",
                         "--storage", str(tmp_path / "seed"), timeout=300)
        assert copied.returncode == 0, copied.stderr
        _, events = _build(tmp_path / "s", ctx, "--cache-from", f"type=registry,ref={ref}")
    warnings = [e["message"] for e in events if e["event"] == "info"
                and e["message"].startswith("WARNING:")]
    assert warnings == [f"WARNING: --cache-from type=registry,ref={ref}: cannot import the "
                        "cache: it holds BuildKit's inline cache (moby.buildkit.cache.v0), "
                        "whose keys pybuild cannot use; export pybuild's own with "
                        "--cache-to type=inline or type=registry"], warnings
