"""Events and operations with real clients: skopeo pushes, pulls and deletes against a real
``pybuild serve`` (and, for the event format, CNCF Distribution configured the same way);
an HTTP sink on 127.0.0.1 receives the notifications; metrics come from the debug
address; audit lines from the server's log."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from testkit.clients import run, skopeo
from testkit.docker_engine import DockerEngine
from testkit.event_sink import EventSink
from testkit.images import Image
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_config,
    free_port,
    http,
    pybuild_registry,
)
from testkit.tools import require_tool

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
REPO = "e2e/events"


def _endpoint_yaml(sink: EventSink, indent: str = "") -> str:
    return (
        f"{indent}notifications:\n"
        f"{indent}  endpoints:\n"
        f"{indent}    - name: sink\n"
        f"{indent}      url: {sink.url}\n"
        f"{indent}      headers:\n"
        f"{indent}        Authorization: [Bearer e2e]\n"
        f"{indent}      timeout: 2s\n"
        f"{indent}      threshold: 1\n"
        f"{indent}      backoff: 100ms\n"
    )


@contextmanager
def registry_with_sink(
    kind: str, workdir: Path, sink: EventSink, debug_port: int = 0
) -> Iterator[RunningRegistry]:
    """A registry of ``kind`` whose notifications go to ``sink`` (pybuild: and whose debug
    server listens on ``debug_port`` when given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "pybuild":
        config = workdir / "config.yaml"
        debug = f"http:\n  debug:\n    addr: 127.0.0.1:{debug_port}\n" if debug_port else ""
        config.write_text(debug + _endpoint_yaml(sink))
        with pybuild_registry(workdir, config=config) as running:
            yield running
        return
    binary = require_tool("docker-registry")

    def argv(addr: str) -> list[str]:
        path = workdir / "config.yml"
        path.write_text(distribution_config(workdir / "storage", addr) + _endpoint_yaml(sink))
        return [binary, "serve", str(path)]

    with RegistryProcess("distribution", argv, storage=workdir / "storage", log=workdir / "registry.log") as running:
        yield running


def push(layout: Path, registry: RunningRegistry, tag: str = "v1") -> None:
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry.ref(REPO, tag)}"))


def manifest_events(events: list[dict], action: str, media_type: str = OCI_MANIFEST) -> list[dict]:
    return [e for e in events if e["action"] == action and e["target"].get("mediaType") == media_type]


@pytest.mark.parametrize("kind", ["pybuild", "distribution"])
def test_push_pull_delete_send_distribution_events(
    kind: str, busybox: Image, busybox_layout: Path, tmp_path: Path
) -> None:
    require_tool("skopeo")
    with EventSink() as sink, registry_with_sink(kind, tmp_path / kind, sink) as registry:
        push(busybox_layout, registry)
        events = sink.wait_for(lambda ev: manifest_events(ev, "push"))
        (pushed,) = manifest_events(events, "push")
        assert pushed["target"]["digest"] == busybox.manifest_digest
        assert pushed["target"]["tag"] == "v1"
        assert pushed["target"]["repository"] == REPO
        assert pushed["target"]["size"] == pushed["target"]["length"] == len(busybox.manifest)
        assert pushed["target"]["url"].endswith(f"/v2/{REPO}/manifests/{busybox.manifest_digest}")
        assert pushed["request"]["method"] == "PUT" and pushed["request"]["useragent"]
        assert set(pushed) >= {"id", "timestamp", "action", "target", "request", "actor", "source"}
        assert set(pushed["source"]) == {"addr", "instanceID"}
        blob_digests = {e["target"]["digest"] for e in events if e["action"] == "push"} - {busybox.manifest_digest}
        assert {layer.digest for layer in busybox.layers} <= blob_digests
        envelope = sink.envelopes[0]
        assert envelope.headers["Content-Type"] == "application/vnd.docker.distribution.events.v1+json"
        assert envelope.headers["Authorization"] == "Bearer e2e"

        run(skopeo("copy", "--src-tls-verify=false", f"docker://{registry.ref(REPO, 'v1')}",
                   f"oci:{tmp_path / 'pulled'}:v1"))
        events = sink.wait_for(lambda ev: manifest_events(ev, "pull"))
        pulled = manifest_events(events, "pull")
        assert pulled[0]["target"]["digest"] == busybox.manifest_digest
        assert pulled[0]["target"]["repository"] == REPO

        run(skopeo("delete", "--tls-verify=false", f"docker://{registry.ref(REPO, 'v1')}"))
        events = sink.wait_for(lambda ev: any(e["action"] == "delete" for e in ev))
        events = sink.wait_for(lambda ev: len([e for e in ev if e["action"] == "delete"]) == 2)
        by_digest, by_tag = [e for e in events if e["action"] == "delete"]
        # The manifest, then each tag that went with it.
        assert by_digest["target"] == {"digest": busybox.manifest_digest, "repository": REPO}
        assert by_tag["target"] == {"tag": "v1", "repository": REPO}
        assert pushed["actor"] == {}  # anonymous
        if kind == "pybuild":
            # One event per operation: skopeo fetches the manifest once per pull.
            assert len(manifest_events(events, "push")) == 1
            assert len(pulled) == 1


def test_events_wait_for_an_endpoint_that_is_down_across_a_restart(
    busybox: Image, busybox_layout: Path, tmp_path: Path
) -> None:
    require_tool("skopeo")
    sink = EventSink()  # not listening yet
    workdir = tmp_path / "pybuild"
    with registry_with_sink("pybuild", workdir, sink) as registry:
        push(busybox_layout, registry)
    with registry_with_sink("pybuild", workdir, sink), sink:
        events = sink.wait_for(lambda ev: manifest_events(ev, "push"))
        assert manifest_events(events, "push")[0]["target"]["digest"] == busybox.manifest_digest
        assert len(manifest_events(events, "push")) == 1
        log = (workdir / "registry.log").read_text()
        assert "event(s) from before the restart to send" in log


def test_a_blocked_endpoint_does_not_hold_up_a_push(busybox: Image, busybox_layout: Path, tmp_path: Path) -> None:
    require_tool("skopeo")
    with EventSink() as sink, registry_with_sink("pybuild", tmp_path / "pybuild", sink) as registry:
        sink.blocked.set()
        push(busybox_layout, registry, "first")
        sink.wait_for(lambda _: sink.blocked_requests == 1)
        push(busybox_layout, registry, "second")  # completes while the endpoint holds a request
        assert sink.blocked_requests == 1 and sink.events == []
        sink.blocked.clear()
        events = sink.wait_for(lambda ev: len(manifest_events(ev, "push")) == 2)
        assert [e["target"]["tag"] for e in manifest_events(events, "push")] == ["first", "second"]


def test_metrics_on_the_debug_address_and_audit_lines(busybox: Image, busybox_layout: Path, tmp_path: Path) -> None:
    require_tool("skopeo")
    debug_port = free_port()
    workdir = tmp_path / "pybuild"
    with EventSink() as sink, registry_with_sink("pybuild", workdir, sink, debug_port) as registry:
        push(busybox_layout, registry)
        for _ in range(3):
            resp = http(registry.addr, "GET", f"/v2/{REPO}/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert resp.status == 200
        assert http(registry.addr, "GET", "/metrics").status == 404  # not on the registry's port
        text = http(f"127.0.0.1:{debug_port}", "GET", "/metrics").body.decode()
        series = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) (\S+)$", text, re.MULTILINE)}
        duration = "pybuild_registry_http_request_duration_seconds"
        assert series[f'{duration}_count{{method="GET",route="manifest",status="200"}}'] == 3
        assert series[f'{duration}_count{{method="PUT",route="manifest",status="201"}}'] == 1
        put = '{method="PUT",route="manifest",status="201"}'
        assert series[f"pybuild_registry_http_request_size_bytes_sum{put}"] == len(busybox.manifest)
        assert series["process_cpu_seconds_total"] > 0
        run(skopeo("delete", "--tls-verify=false", f"docker://{registry.ref(REPO, 'v1')}"))
    audit = [
        json.loads(line) for line in (workdir / "registry.log").read_text().splitlines()
        if line.startswith('{"event":"audit"')
    ]
    actions = [(a["action"], a["method"], a["status"]) for a in audit]
    assert ("push", "PUT", 201) in actions  # blob commits and the manifest
    manifest = [a for a in audit if a["action"] == "push" and a.get("tags") == ["v1"]]
    assert manifest and manifest[0]["digest"] == busybox.manifest_digest
    assert manifest[0]["agent"].startswith("skopeo") and manifest[0]["remote"] == "127.0.0.1"
    assert manifest[0]["outcome"] == "success" and manifest[0]["user"] is None
    (deleted,) = [a for a in audit if a["action"] == "delete"]
    assert deleted["digest"] == busybox.manifest_digest and deleted["status"] == 202


@pytest.mark.slow
def test_docker_push_and_pull_send_one_manifest_event_each(
    docker_engine: DockerEngine, loaded_busybox: str, tmp_path: Path, unique: str
) -> None:
    require_tool("skopeo")
    with EventSink() as sink, registry_with_sink("pybuild", tmp_path / "pybuild", sink) as registry:
        repo = f"e2e/docker-events-{unique}"
        remote, converted = registry.ref(repo, "v1"), registry.ref(repo, "oci")
        try:
            docker_engine.run("tag", loaded_busybox, remote)
            docker_engine.run("push", remote)
            events = sink.wait_for(lambda ev: manifest_events(ev, "push", DOCKER_MANIFEST))
            (pushed,) = manifest_events(events, "push", DOCKER_MANIFEST)
            assert pushed["target"]["tag"] == "v1"
            assert pushed["request"]["useragent"].startswith("docker/")
            # An OCI copy has a manifest the engine has never seen, so its pull fetches it.
            run(skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--format", "oci",
                       f"docker://{remote}", f"docker://{converted}"))
            events = sink.wait_for(lambda ev: manifest_events(ev, "push"))
            digest = manifest_events(events, "push")[0]["target"]["digest"]
            before = len(manifest_events(events, "pull"))
            docker_engine.run("pull", converted)
            sink.wait_for(lambda ev: len(manifest_events(ev, "pull")) > before)
            time.sleep(0.5)  # a second event, if any, has arrived by now
            events = sink.events
            pulls = manifest_events(events, "pull")[before:]
            # The engine resolves the tag with a HEAD (no event) and GETs the manifest by
            # digest: one pull event, naming the digest.
            assert [(e["target"]["digest"], e["target"].get("tag")) for e in pulls] == [(digest, None)]
            assert pulls[0]["request"]["useragent"].startswith("docker/")
        finally:
            docker_engine.run("rmi", "--force", remote, converted, check=False)
