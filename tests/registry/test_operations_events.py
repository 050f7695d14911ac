"""Notifications: events in CNCF Distribution's envelope, POSTed to a real HTTP endpoint
(testkit.event_sink) by a registry app; filtering, persistence across a restart, the
queue bound, and a slow endpoint that never slows a push."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
from pathlib import Path

import bcrypt
import pytest

from cas import Digest
from registry import oci
from registry.server import ConfigError, ServerConfig, load_config, make_app
from registry.server.notifications import EVENTS_MEDIA_TYPE, Endpoint, parse_duration, parse_endpoints
from registry.server.state import REGISTRY
from testkit.event_sink import EventSink
from tests.helpers.disks import fill_up, small_filesystem

from .helpers import push_blob, push_image

ACCEPT = {"Accept": oci.OCI_MANIFEST}


@pytest.fixture
def sink():
    with EventSink() as running:
        yield running


def endpoint(sink: EventSink, **kw) -> Endpoint:
    base = {"name": "sink", "url": sink.url, "timeout": 2.0, "threshold": 1, "backoff": 0.05,
            "headers": (("Authorization", "Bearer s3cret"),)}
    base.update(kw)
    return Endpoint(**base)


@pytest.fixture
def registry(aiohttp_client, tmp_path: Path):
    async def start(*endpoints: Endpoint, storage: Path | None = None, **overrides):
        config = dataclasses.replace(ServerConfig(), notifications_endpoints=endpoints, **overrides)
        return await aiohttp_client(make_app(config, storage=storage or tmp_path / "storage"))

    return start


def manifests(events, action):
    return [e for e in events if e["action"] == action and e["target"].get("mediaType") == oci.OCI_MANIFEST]


async def test_push_pull_delete_mount_events_in_distribution_format(registry, sink):
    client = await registry(endpoint(sink))
    layer = b"layer for the events" * 300
    digest, body = await push_image(client, "ev/app", "v1", [layer])
    events = await sink.wait_for_async(lambda ev: manifests(ev, "push"))
    env = sink.envelopes[-1]
    assert env.headers["Content-Type"] == EVENTS_MEDIA_TYPE
    assert env.headers["Authorization"] == "Bearer s3cret"
    assert len(env.body["events"]) == 1
    (push,) = manifests(events, "push")
    assert set(push) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    assert push["target"] == {
        "mediaType": oci.OCI_MANIFEST, "size": len(body), "digest": str(digest), "length": len(body),
        "repository": "ev/app", "url": f"http://{client.server.host}:{client.server.port}/v2/ev/app/manifests/{digest}",
        "tag": "v1",
    }
    assert push["request"]["method"] == "PUT"
    assert push["request"]["addr"].startswith("127.0.0.1:")
    assert push["request"]["host"] == f"{client.server.host}:{client.server.port}"
    assert push["request"]["id"]
    assert push["actor"] == {}  # anonymous, as Distribution writes it
    assert push["source"]["instanceID"] and push["source"]["addr"]
    assert push["timestamp"].endswith("Z")
    # The blobs' pushes come with their sizes (filled in from the store).
    blob_pushes = [
        e for e in events if e["action"] == "push" and e["target"]["mediaType"] == "application/octet-stream"
    ]
    assert {e["target"]["digest"]: e["target"]["size"] for e in blob_pushes}[str(Digest.of(layer))] == len(layer)
    assert len(blob_pushes) == 2  # config and layer

    resp = await client.get("/v2/ev/app/manifests/v1", headers=ACCEPT)
    assert resp.status == 200
    await resp.read()
    assert (await client.head("/v2/ev/app/manifests/v1", headers=ACCEPT)).status == 200  # no event
    assert await (await client.get(f"/v2/ev/app/blobs/{Digest.of(layer)}")).read() == layer
    ranged = await client.get(f"/v2/ev/app/blobs/{Digest.of(layer)}", headers={"Range": "bytes=0-9"})
    assert ranged.status == 206  # no event
    await ranged.read()
    resp = await client.post(f"/v2/ev/other/blobs/uploads/?mount={Digest.of(layer)}&from=ev/app")
    assert resp.status == 201
    assert (await client.delete(f"/v2/ev/app/manifests/{digest}")).status == 202
    events = await sink.wait_for_async(lambda ev: any(e["action"] == "delete" for e in ev))
    (pull,) = manifests(events, "pull")
    assert pull["target"]["tag"] == "v1" and pull["target"]["digest"] == str(digest)
    assert pull["target"]["size"] == len(body) and pull["request"]["method"] == "GET"
    blob_pulls = [e for e in events if e["action"] == "pull" and e["target"]["mediaType"] == "application/octet-stream"]
    assert [(e["target"]["digest"], e["target"]["size"]) for e in blob_pulls] == [(str(Digest.of(layer)), len(layer))]
    (mount,) = [e for e in events if e["action"] == "mount"]
    assert mount["target"]["repository"] == "ev/other"
    assert mount["target"]["fromRepository"] == "ev/app"
    assert mount["target"]["size"] == len(layer)
    events = await sink.wait_for_async(lambda ev: len([e for e in ev if e["action"] == "delete"]) == 2)
    delete, tag_delete = [e for e in events if e["action"] == "delete"]
    assert delete["target"] == {"digest": str(digest), "repository": "ev/app"}
    assert tag_delete["target"] == {"tag": "v1", "repository": "ev/app"}  # dropped with it
    # Sent in the order they happened, each once.
    assert [e["action"] for e in events][-4:] == ["pull", "mount", "delete", "delete"]
    assert len({e["id"] for e in events}) == len(events)


async def test_actor_is_the_authenticated_user(registry, sink, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    client = await registry(endpoint(sink), auth_htpasswd=htpasswd)
    token = base64.b64encode(b"alice:pw").decode()
    resp = await client.post(f"/v2/who/app/blobs/uploads/?digest={Digest.of(b'a')}", data=b"a",
                             headers={"Authorization": f"Basic {token}"})
    assert resp.status == 201
    (event,) = await sink.wait_for_async(lambda ev: len(ev) == 1)
    assert event["actor"] == {"name": "alice"}


async def test_ignored_media_types_and_actions_are_not_sent(registry, sink):
    client = await registry(endpoint(sink, ignored_media_types=frozenset({"application/octet-stream"}),
                                     ignored_actions=frozenset({"pull"})))
    await push_image(client, "ig/app", "v1", [b"ignored layer"])
    for _ in range(2):
        await (await client.get("/v2/ig/app/manifests/v1", headers=ACCEPT)).read()
    assert (await client.delete("/v2/ig/app/manifests/v1")).status == 202  # by tag: the marker
    events = await sink.wait_for_async(lambda ev: any(e["action"] == "delete" for e in ev))
    await asyncio.sleep(0.3)  # anything queued before the marker has arrived by now
    assert [(e["action"], e["target"].get("tag")) for e in sink.events] == [("push", "v1"), ("delete", "v1")]
    assert events[-1]["target"] == {"tag": "v1", "repository": "ig/app"}


async def test_disabled_endpoint_gets_nothing(registry, sink, tmp_path):
    client = await registry(endpoint(sink, disabled=True))
    await push_image(client, "off/app", "v1", [b"x"])
    await asyncio.sleep(0.3)
    assert sink.events == []
    assert not (tmp_path / "storage" / "events.db").exists()


async def test_endpoint_down_across_a_restart_loses_no_event(registry, tmp_path):
    storage = tmp_path / "storage"
    down = EventSink()  # not started yet: its port refuses connections
    client = await registry(endpoint(down), storage=storage)
    digest, _ = await push_image(client, "down/app", "v1", [b"while the endpoint is down"])
    await asyncio.sleep(0.3)  # a few failed attempts
    await client.close()  # the registry stops: events are in events.db
    with down:
        client = await registry(endpoint(down), storage=storage)
        events = await down.wait_for_async(lambda ev: manifests(ev, "push"))
        assert manifests(events, "push")[0]["target"]["digest"] == str(digest)
        assert len([e for e in events if e["action"] == "push"]) == 3


async def test_events_queued_at_shutdown_are_written_before_it(registry, tmp_path):
    storage = tmp_path / "storage"
    down = EventSink()
    client = await registry(endpoint(down), storage=storage)
    for i in range(20):
        await push_blob(client, "late/app", b"late %d" % i)
    await client.close()  # at once: the writer may not have run since the last pushes
    with down:
        await registry(endpoint(down), storage=storage)
        await down.wait_for_async(lambda ev: len(ev) >= 20)
        await asyncio.sleep(0.3)
        assert [e["target"]["digest"] for e in down.events] == [str(Digest.of(b"late %d" % i)) for i in range(20)]


async def test_failing_endpoint_is_retried(registry, sink):
    sink.failing = True
    client = await registry(endpoint(sink))
    await push_blob(client, "retry/app", b"retried")
    await asyncio.sleep(0.3)
    assert sink.events == []
    sink.failing = False
    events = await sink.wait_for_async(lambda ev: len(ev) == 1)
    assert events[0]["target"]["digest"] == str(Digest.of(b"retried"))


async def test_processes_sharing_a_storage_directory_each_send_an_event_once(registry, sink, tmp_path):
    storage = tmp_path / "storage"
    first = await registry(endpoint(sink), storage=storage)
    second = await registry(endpoint(sink), storage=storage)
    sink.blocked.set()  # both senders get to hold a POST at once
    sent = [b"shared %d" % i for i in range(20)]
    for i, data in enumerate(sent):
        await push_blob(first if i % 2 else second, "shared/app", data)
    for _ in range(200):
        if sink.blocked_requests == 2:
            break
        await asyncio.sleep(0.02)
    assert sink.blocked_requests == 2
    sink.blocked.clear()
    await sink.wait_for_async(lambda ev: len(ev) >= len(sent))
    await asyncio.sleep(0.5)  # time for a second delivery of any of them
    assert sorted(e["target"]["digest"] for e in sink.events) == sorted(str(Digest.of(d)) for d in sent)


async def test_events_a_stopped_process_left_are_sent_by_another(registry, tmp_path, monkeypatch):
    monkeypatch.setattr("registry.server.notifications.ADOPT_EVERY", 0.1, raising=False)
    storage = tmp_path / "storage"
    down = EventSink()
    staying = await registry(endpoint(down), storage=storage)
    leaving = await registry(endpoint(down), storage=storage)
    (storage / "events.killed-before.lock").touch()  # a process killed with nothing to send
    for i in range(3):
        await push_blob(leaving, "left/app", b"left %d" % i)
    await asyncio.sleep(0.3)
    await leaving.close()  # its three events wait in events.db, which the other one shares
    with down:
        events = await down.wait_for_async(lambda ev: len(ev) >= 3, timeout=10)
        await asyncio.sleep(0.5)
        assert [e["target"]["digest"] for e in down.events] == [str(Digest.of(b"left %d" % i)) for i in range(3)]
    notifier = staying.server.app[REGISTRY].notifier
    assert events and notifier is not None
    assert [p.name for p in storage.glob("events.*.lock")] == [f"events.{notifier.instance_id}.lock"]


async def test_zero_threshold_and_backoff_mean_the_defaults_not_a_busy_loop(registry, sink):
    # Distribution reads 0 as its defaults (threshold 10, backoff 1s, timeout 1s); a
    # backoff of 0 taken as such would retry a failing endpoint without pause.
    (zero,) = parse_endpoints([{"name": "sink", "url": sink.url, "threshold": 0, "backoff": "0s", "timeout": 0}])
    assert (zero.threshold, zero.backoff, zero.timeout) == (10, 1.0, 1.0)
    sink.failing = True
    client = await registry(zero)
    await push_blob(client, "busy/app", b"not delivered yet")
    await asyncio.sleep(1.5)
    text = client.server.app[REGISTRY].metrics.render(0, None).decode()
    failed = re.search(r'pybuild_registry_notifications_total\{endpoint="sink",outcome="failed"\} (\S+)', text)
    assert failed is not None and 10 <= float(failed.group(1)) <= 13, text


async def test_full_queue_drops_events_with_a_log_line(registry, caplog, tmp_path):
    storage = tmp_path / "storage"
    down = EventSink()
    caplog.set_level(logging.WARNING, logger="pybuild.registry")
    client = await registry(endpoint(down, backoff=5.0), storage=storage, notifications_queue_size=3)
    for i in range(6):
        await push_blob(client, "full/app", b"blob %d" % i)
    await asyncio.sleep(0.3)
    dropped = [json.loads(r.getMessage()) for r in caplog.records if "notifications_dropped" in r.getMessage()]
    assert dropped and dropped[0]["endpoint"] == "sink" and dropped[0]["queue_size"] == 3
    text = client.server.app[REGISTRY].metrics.render(0, None).decode()
    assert 'pybuild_registry_notifications_total{endpoint="sink",outcome="dropped"} 3.0' in text
    assert 'pybuild_registry_notifications_pending{endpoint="sink"} 3.0' in text
    assert 'pybuild_registry_notifications_total{endpoint="sink",outcome="failed"}' in text
    await client.close()
    with down:
        client = await registry(endpoint(down), storage=storage, notifications_queue_size=3)
        await down.wait_for_async(lambda ev: len(ev) >= 3)
        await asyncio.sleep(0.3)
        # The first three were kept, in order; the other three were dropped.
        assert [e["target"]["digest"] for e in down.events] == [str(Digest.of(b"blob %d" % i)) for i in range(3)]


async def test_events_db_on_a_full_disk_delays_events_but_loses_none(registry, caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="pybuild.registry")
    down = EventSink()
    with small_filesystem(tmp_path / "small", "16m") as disk:
        client = await registry(endpoint(down), storage=disk / "storage")
        await push_blob(client, "fulldb/app", b"before the disk filled")
        await asyncio.sleep(0.3)  # written to events.db, waiting for the endpoint
        filler = fill_up(disk)
        with down:  # delivered now; events.db cannot even record that (a DELETE needs room)
            await down.wait_for_async(lambda ev: len(ev) >= 1)
            resp = await client.get(f"/v2/fulldb/app/blobs/{Digest.of(b'before the disk filled')}")
            assert resp.status == 200  # a pull event, held in memory while the disk is full
            await asyncio.sleep(1.5)
            failing = [r.getMessage() for r in caplog.records if "cannot use" in r.getMessage()]
            assert len(failing) == 1 and "storage full" in failing[0] and "free space" in failing[0], failing
            assert not any(r.exc_info for r in caplog.records)
            filler.unlink()
            await push_blob(client, "fulldb/app", b"after the disk was emptied")
            events = await down.wait_for_async(lambda ev: len(ev) >= 3, timeout=10)
            assert [(e["action"], e["target"]["digest"]) for e in events[-2:]] == [
                ("pull", str(Digest.of(b"before the disk filled"))),
                ("push", str(Digest.of(b"after the disk was emptied"))),
            ]
            assert events[0]["target"]["digest"] == str(Digest.of(b"before the disk filled"))
            assert any("can be written again" in r.getMessage() for r in caplog.records)
        await client.close()


async def test_a_blocked_endpoint_never_holds_up_a_push(registry, sink):
    sink.blocked.set()
    client = await registry(endpoint(sink, timeout=30.0))
    await push_blob(client, "slow/app", b"first")
    # Wait until the sender is stuck in the blocked endpoint, then push while it is.
    for _ in range(200):
        if sink.blocked_requests:
            break
        await asyncio.sleep(0.02)
    assert sink.blocked_requests == 1
    digest, _ = await asyncio.wait_for(push_image(client, "slow/app", "v1", [b"layer"]), 30)
    assert sink.blocked_requests == 1 and sink.events == []
    sink.blocked.clear()
    events = await sink.wait_for_async(lambda ev: manifests(ev, "push"))
    assert manifests(events, "push")[0]["target"]["digest"] == str(digest)


def test_endpoint_config_in_distribution_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "notifications:\n"
        "  endpoints:\n"
        "    - name: ci\n"
        "      url: http://127.0.0.1:9/events\n"
        "      headers:\n"
        "        Authorization: [Bearer abc]\n"
        "      timeout: 500ms\n"
        "      threshold: 5\n"
        "      backoff: 1m30s\n"
        "      ignoredmediatypes: [application/octet-stream]\n"
        "      ignore:\n"
        "        mediatypes: [application/vnd.oci.image.config.v1+json]\n"
        "        actions: [pull]\n"
        "    - name: paused\n"
        "      url: https://127.0.0.1:9/\n"
        "      disabled: true\n"
        "  queue_size: 50\n"
    )
    config = load_config(path, environ={})
    ci, off = config.notifications_endpoints
    assert ci.timeout == 0.5 and ci.threshold == 5 and ci.backoff == 90
    assert ci.headers == (("Authorization", "Bearer abc"),)
    assert ci.ignored_media_types == {"application/octet-stream", "application/vnd.oci.image.config.v1+json"}
    assert ci.ignored_actions == {"pull"}
    assert off.disabled
    assert config.notifications_queue_size == 50
    env = load_config(environ={"PYBUILD_NOTIFICATIONS_ENDPOINTS": '[{"name": "e", "url": "http://127.0.0.1:1/"}]'})
    assert env.notifications_endpoints[0].name == "e"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{}", "must be a list"),
        ("[{url: 'http://x/'}]", "name is required"),
        ("[{name: a, url: 'ftp://x/'}]", "url must be an http"),
        ("[{name: a, url: 'http://x/', timeout: soon}]", "timeout must be a duration"),
        ("[{name: a, url: 'http://x/', threshold: -1}]", "threshold must be a whole number"),
        ("[{name: a, url: 'http://x/', ignore: {actions: [fetch]}}]", "unknown action"),
        ("[{name: a, url: 'http://x/', color: red}]", "unknown key"),
        ("[{name: a, url: 'http://x/'}, {name: a, url: 'http://y/'}]", "unique"),
        ("[{name: a, url: 'http://x/', headers: {X: [\"a\\nb\"]}}]", "one line"),
    ],
)
def test_bad_endpoint_config_is_a_clear_error(doc, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ={"PYBUILD_NOTIFICATIONS_ENDPOINTS": doc})


def test_durations():
    assert parse_duration("1s", "t") == 1 and parse_duration("250ms", "t") == 0.25
    assert parse_duration(3, "t") == 3.0
    for bad in ("", "1", "1x", "-1s", "25h", True):
        with pytest.raises(ValueError):
            parse_duration(bad, "t")
    assert parse_endpoints(None) == ()


async def test_an_endpoint_is_reached_through_the_proxy_the_environment_names(
        registry, sink, monkeypatch):
    # As Distribution's (Go's) notifications: HTTP_PROXY; the endpoint's name resolves
    # nowhere, so only the proxy (the sink, taking the request in absolute form) gets it.
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", sink.url.rsplit("/", 1)[0])
    client = await registry(endpoint(sink, url="http://hooks.invalid/events"))
    await push_blob(client, "proxied/app", b"through the proxy")
    events = await sink.wait_for_async(lambda ev: len(ev) == 1)
    assert events[0]["target"]["digest"] == str(Digest.of(b"through the proxy"))
