"""``pybuild serve`` with its metadata in PostgreSQL: schema migrations, and two replicas
sharing one database (and one storage directory, or packs in S3 and directories of their
own) answering for each other at once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest

from cas.pg_db import PgDatabase, SchemaMismatch
from cas.pg_meta import MIGRATIONS, PgMetadata
from cas.s3_location import S3Location
from registry.server import ServerConfig, make_app
from registry.server.metadata_pg import MIGRATIONS as REGISTRY_MIGRATIONS
from registry.server.metadata_pg import PgRegistryMetadata
from registry.server.state import REGISTRY as APP_REGISTRY
from registry.server.upload_locks_pg import PgUploadLocks
from testkit.clients import run, skopeo
from testkit.images import make_image, make_layer, tar_files, write_oci_layout
from testkit.postgres import PostgresServer
from testkit.registries import get_manifest, http, list_tags, pybuild_configured_registry

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CAS, REGISTRY = len(MIGRATIONS), len(REGISTRY_MIGRATIONS)  # the schema versions this code writes


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ))


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.create_database(f"serve_{uuid.uuid4().hex[:12]}")


def test_storage_migrate_brings_both_schemas_up_once(database: str) -> None:
    first = _cli("storage", "migrate", "--database", database, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"cas": {"from": 0, "to": CAS}, "registry": {"from": 0, "to": REGISTRY}}
    again = _cli("storage", "migrate", "--database", database)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"cas schema: version {CAS} (up to date)",
                                         f"registry schema: version {REGISTRY} (up to date)"]


def test_serve_refuses_a_database_not_migrated_and_names_the_fix(database: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--addr", "127.0.0.1:0", "--storage",
         str(tmp_path / "storage")], env={**os.environ, "PYBUILD_DATABASE_URL": database},
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert f"is at version 0, this pybuild needs {CAS}: run `pybuild storage migrate`" in proc.stderr
    # the other fix it names is one `serve` takes (it has no --migrate flag)
    assert "(or set `database.migrate: true` in the registry's config, PYBUILD_DATABASE_MIGRATE=1)" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_the_tagged_repositories_migration(database: str) -> None:
    # Step 5 records whether a repository was ever tagged (tags/list: 404 until then);
    # before it, one holding a tag or a manifest counts as tagged, one with only blobs not.
    import psycopg

    PgDatabase(database, "registry", REGISTRY_MIGRATIONS[:4], migrate=True).close()
    with psycopg.connect(database, autocommit=True) as conn:
        for name in ("app", "untagged", "blobs"):
            conn.execute("INSERT INTO repositories VALUES (%s, 1)", (name,))
        for repo in ("app", "untagged"):
            conn.execute("INSERT INTO manifests (repo, digest, media_type, size, created)"
                         " VALUES (%s, 'sha256:ab', 'x', 1, 1)", (repo,))
        conn.execute("INSERT INTO tags VALUES ('app', 'v1', 'sha256:ab', 1)")
    meta = await PgRegistryMetadata.open(database, migrate=True)
    try:
        assert [await meta.repository_tagged(r) for r in ("app", "untagged", "blobs")] == [True, True, False]
    finally:
        await meta.close()


def test_a_schema_newer_than_this_code_is_refused(database: str) -> None:
    db = PgDatabase(database, "cas", [*MIGRATIONS, "CREATE TABLE later_step(x INTEGER)"], migrate=True)
    db.close()
    with pytest.raises(SchemaMismatch, match=f"version {CAS + 1}, newer than this pybuild knows .{CAS}.: upgrade"):
        PgMetadata(database, migrate=True)
    migrate = _cli("storage", "migrate", "--database", database)
    assert migrate.returncode == 1
    assert (f"the cas schema in {database} is version {CAS + 1}, newer than this pybuild knows "
            f"({CAS}): upgrade pybuild on this machine") in migrate.stderr


def test_an_unreachable_database_is_one_clear_line_without_the_password(tmp_path: Path) -> None:
    proc = _cli("storage", "stats", "--storage", str(tmp_path / "s"), "--database",
                "postgresql://registry:hunter2@127.0.0.1:1/registry")
    assert proc.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://registry:***@127.0.0.1:1/registry" in proc.stderr
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


def test_two_replicas_on_one_database_answer_for_each_other(database: str, tmp_path: Path) -> None:
    assert _cli("storage", "migrate", "--database", database).returncode == 0
    storage = tmp_path / "storage"
    settings = {"database": {"url": database}}
    image = make_image([make_layer(tar_files({"hello.txt": b"hello from replica a\n"}))])
    layout = write_oci_layout(image, tmp_path / "layout")
    with pybuild_configured_registry(tmp_path / "a", settings, storage) as a, \
            pybuild_configured_registry(tmp_path / "b", settings, storage) as b:
        # pushed through A, read through B at once (tag, manifest, blobs, catalog)
        run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                   f"docker://{a.ref('team/app', 'v1')}"))
        got = get_manifest(b.addr, "team/app", "v1")
        assert got.status == 200 and got.headers["docker-content-digest"] == image.manifest_digest
        layer = image.layers[0]
        blob = http(b.addr, "GET", f"/v2/team/app/blobs/{layer.digest}")
        assert blob.status == 200 and blob.body == layer.blob
        # a tag moved through B is what A answers next
        put = http(b.addr, "PUT", "/v2/team/app/manifests/latest", body=got.body,
                   headers={"Content-Type": MANIFEST})
        assert put.status == 201
        assert list_tags(a.addr, "team/app") == ["latest", "v1"]
        deleted = http(a.addr, "DELETE", f"/v2/team/app/manifests/{image.manifest_digest}")
        assert deleted.status == 202
        assert get_manifest(b.addr, "team/app", "v1").status == 404
        # a chunked upload opened on A goes on through B, A again (whose own copy of the
        # session is stale by then) and finishes on B
        data = os.urandom(300_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        opened = http(a.addr, "POST", "/v2/team/other/blobs/uploads/")
        assert opened.status == 202
        location = opened.headers["location"]
        for replica, start, end in ((a, 0, 100_000), (b, 100_000, 200_000), (a, 200_000, 250_000)):
            part = http(replica.addr, "PATCH", location, body=data[start:end], headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"})
            assert part.status == 202, part.body
            assert part.headers["range"] == f"0-{end - 1}"
            location = part.headers["location"]
        sep = "&" if "?" in location else "?"
        done = http(b.addr, "PUT", f"{location}{sep}digest={digest}", body=data[250_000:],
                    headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.body
        assert http(a.addr, "GET", f"/v2/team/other/blobs/{digest}").body == data
    # the CLI sees the same store: stats count what the replicas committed, fsck is clean
    stats = _cli("storage", "stats", "--storage", str(storage), "--database", database, "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["blobs"] >= 3
    fsck = _cli("storage", "fsck", "--storage", str(storage), "--database", database, "--json")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert json.loads(fsck.stdout)["ok"] is True


def test_replicas_with_directories_of_their_own_resume_each_others_uploads(
        database: str, s3_location: S3Location, tmp_path: Path) -> None:
    # Packs in S3, metadata in PostgreSQL: each replica starts on an empty storage
    # directory of its own, and an upload's checkpoints (its tail too) live in shared storage.
    assert _cli("storage", "migrate", "--database", database).returncode == 0
    settings = {"database": {"url": database}, "packs": s3_location.to_url(keys=True)}
    dirs = {n: tmp_path / n / "storage" for n in ("a", "b")}
    data = os.urandom(6 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pybuild_configured_registry(tmp_path / "a", settings, dirs["a"]) as a, \
            pybuild_configured_registry(tmp_path / "b", settings, dirs["b"]) as b:
        opened = http(a.addr, "POST", "/v2/team/app/blobs/uploads/")
        assert opened.status == 202
        location = opened.headers["location"]
        # pieces go to the session's pack, the rest stays in its tail, at every step
        for replica, start, end in ((a, 0, 2_500_000), (b, 2_500_000, 4_000_000), (a, 4_000_000, 5_000_123)):
            part = http(replica.addr, "PATCH", location, body=data[start:end], headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"})
            assert part.status == 202, part.body
            assert part.headers["range"] == f"0-{end - 1}"
            location = part.headers["location"]
            status = http(b.addr if replica is a else a.addr, "GET", location)
            assert status.status == 204 and status.headers["range"] == f"0-{end - 1}"
        for d in dirs.values():
            assert list((d / "ingests").iterdir()) == []  # no tail file anywhere
        sep = "&" if "?" in location else "?"
        done = http(b.addr, "PUT", f"{location}{sep}digest={digest}", body=data[5_000_123:],
                    headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.body
        for replica in (a, b):
            assert http(replica.addr, "GET", f"/v2/team/app/blobs/{digest}").body == data
    # A command on a third, empty directory finds the packs through the database.
    fsck = subprocess.run(
        [sys.executable, "-m", "builder", "storage", "fsck", "--storage", str(tmp_path / "cli"),
         "--database", database, "--json"], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": s3_location.access_key,
             "AWS_SECRET_ACCESS_KEY": s3_location.secret_key})
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    report = json.loads(fsck.stdout)
    assert report["ok"] is True and report["blobs_checked"] >= 1 and report["pieces_checked"] >= 1


def _patch_in_two_halves(addr: str, location: str, body: bytes, sent_half: threading.Event,
                         go: threading.Event, answers: dict[str, tuple[int, str]], who: str) -> None:
    """PATCH ``body`` as bytes 0.. of the session: the headers and the first half, then
    (once ``go`` is set) the rest; the answer's status and Range go to ``answers[who]``."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = (f"PATCH {location} HTTP/1.1\r\nHost: {addr}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\nContent-Range: 0-{len(body) - 1}\r\n\r\n")
        half = len(body) // 2
        sock.sendall(head.encode() + body[:half])
        sent_half.set()
        go.wait(60)
        with contextlib.suppress(OSError):  # a server that answered early may close
            sock.sendall(body[half:])
        response = HTTPResponse(sock)
        response.begin()
        answers[who] = (response.status, response.getheader("Range") or "")


@pytest.mark.parametrize("packs", ["files", "s3"])
def test_two_requests_of_one_session_at_once_on_two_replicas_run_one_after_the_other(
        packs: str, database: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # A hostile client sends a chunk of one session to replica A and, while A still reads
    # it, a different chunk for the same bytes to replica B. The session's lock holds B
    # back until A is done; B then finds the session past its Content-Range: 416 with the
    # Range to resume from (the spec's answer to a chunk out of order), and the session
    # holds exactly A's bytes.
    assert _cli("storage", "migrate", "--database", database).returncode == 0
    settings: dict[str, object] = {"database": {"url": database}}
    dirs = dict.fromkeys(("a", "b"), tmp_path / "storage")
    env = dict(os.environ)
    if packs == "s3":
        s3: S3Location = request.getfixturevalue("s3_location")
        settings["packs"] = s3.to_url(keys=True)
        dirs = {n: tmp_path / n / "storage" for n in ("a", "b")}
        env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
    bodies = {"a": os.urandom(700_000), "b": os.urandom(700_000)}
    with pybuild_configured_registry(tmp_path / "a", settings, dirs["a"]) as a, \
            pybuild_configured_registry(tmp_path / "b", settings, dirs["b"]) as b:
        opened = http(a.addr, "POST", "/v2/team/app/blobs/uploads/")
        assert opened.status == 202
        location = opened.headers["location"]
        answers: dict[str, tuple[int, str]] = {}
        go = threading.Event()
        halves = {n: threading.Event() for n in bodies}
        threads = [threading.Thread(target=_patch_in_two_halves, args=(
            r.addr, location, bodies[n], halves[n], go, answers, n)) for n, r in (("a", a), ("b", b))]
        threads[0].start()
        assert halves["a"].wait(60)
        threads[1].start()
        assert halves["b"].wait(60)
        time.sleep(0.5)  # both replicas have the headers; without the lock both append now
        go.set()
        for t in threads:
            t.join(120)
        assert sorted(s for s, _ in answers.values()) == [202, 416], answers
        winner = next(n for n, (s, _) in answers.items() if s == 202)
        assert {r for _, r in answers.values()} == {f"0-{len(bodies[winner]) - 1}"}
        for replica in (a, b):
            status = http(replica.addr, "GET", location)
            assert status.status == 204 and status.headers["range"] == f"0-{len(bodies[winner]) - 1}"
        data = bodies[winner]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sep = "&" if "?" in location else "?"
        done = http(b.addr, "PUT", f"{location}{sep}digest={digest}")
        assert done.status == 201, done.body
        assert http(a.addr, "GET", f"/v2/team/app/blobs/{digest}").body == data
    fsck = subprocess.run(
        [sys.executable, "-m", "builder", "storage", "fsck", "--storage", str(dirs["a"]),
         "--database", database, "--json"], capture_output=True, text=True, timeout=120,
        check=False, env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert json.loads(fsck.stdout)["ok"] is True


def test_storage_commands_on_postgres_as_a_user_without_root(database: str, tmp_path: Path) -> None:
    # An operator's account (or a service account whose home cannot be written) runs the
    # storage commands against the shared database.
    from testkit.tools import require_root
    from testkit.users import python_for, temporary_user

    require_root("creating a user to run the commands as needs root")
    with temporary_user("pbdb", subids=False) as user:
        python, env = python_for(user)

        def pybuild(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return user.run(*python, "-m", "builder", "storage", *args, env={**env, **extra})

        storage = str(user.home / "storage")
        migrate = pybuild("migrate", "--database", database)
        assert migrate.returncode == 0, migrate.stderr
        assert f"cas schema: version {CAS} (migrated from version 0)" in migrate.stdout
        for command in ("stats", "fsck", "gc"):
            done = pybuild(command, "--storage", storage, "--database", database)
            assert done.returncode == 0, done.stderr
        stats = pybuild("stats", "--database", database, "--json")  # the default directory
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["blobs"] == 0
        # A home it cannot write: one line naming the directory and the way out.
        homeless = pybuild("stats", "--database", database, HOME="/nonexistent")
        assert homeless.returncode == 1
        lines = homeless.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in homeless.stderr
        assert "/nonexistent" in lines[0] and "permission denied" in lines[0]
        assert "--storage DIR or PYBUILD_STORAGE" in lines[0]


async def test_requests_queued_for_an_upload_slot_hold_no_database_connection(
        database: str, aiohttp_client: Any, tmp_path: Path) -> None:
    # Each request of a session holds a database connection for its lock: the ones only
    # waiting for an upload slot (uploads.max_active) must not, or a queue of pushes
    # would use up the locks' connections.
    assert _cli("storage", "migrate", "--database", database).returncode == 0
    config = dataclasses.replace(ServerConfig(log_access=False), database_url=database,
                                 uploads_max_active=1, uploads_max_active_per_client=1)
    client = await aiohttp_client(make_app(config, storage=tmp_path / "storage"))
    reg = client.server.app[APP_REGISTRY]
    assert isinstance(reg.upload_locks, PgUploadLocks)
    go = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: streamed, takes a slot
        yield b"x" * (2 << 20)
        await go.wait()
        yield b"y" * 1000

    locations = []
    for _ in range(4):
        opened = await client.post("/v2/team/app/blobs/uploads/")
        assert opened.status == 202
        locations.append(opened.headers["Location"])
    patches = [asyncio.create_task(client.patch(loc, data=body(), headers={
        "Content-Type": "application/octet-stream"})) for loc in locations]
    for _ in range(3000):
        if reg.upload_slots.active == 1 and reg.upload_slots.waiting == 3:
            break
        await asyncio.sleep(0.01)
    assert (reg.upload_slots.active, reg.upload_slots.waiting) == (1, 3)
    assert reg.upload_locks.connections_in_use == 1  # the streaming one's
    go.set()
    for done in await asyncio.gather(*patches):
        assert done.status == 202, await done.text()
        assert done.headers["Range"] == f"0-{(2 << 20) + 1000 - 1}"
