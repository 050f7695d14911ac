"""The audit log: one JSON line per write (push, blob commit, mount, delete), with who,
what, from where and the outcome, refused attempts included."""

from __future__ import annotations

import base64
import json
import logging

import bcrypt
import pytest

from cas import Digest
from registry.server.audit import AUDIT_LOGGER

from .helpers import push_blob, push_image

AGENT = {"User-Agent": "audit-test/1.0"}


@pytest.fixture
def audit_lines(caplog):
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)

    def lines() -> list[dict]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]

    return lines


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_every_kind_of_write_is_audited(make_client, audit_lines):
    client = await make_client()
    data = b"session upload"
    resp = await client.post("/v2/au/app/blobs/uploads/", headers=AGENT)
    location = resp.headers["Location"]
    assert (await client.patch(location, data=data, headers=AGENT)).status == 202
    digest = Digest.of(data)
    sep = "&" if "?" in location else "?"
    assert (await client.put(f"{location}{sep}digest={digest}", headers=AGENT)).status == 201
    assert (await client.post(f"/v2/au/copy/blobs/uploads/?mount={digest}&from=au/app", headers=AGENT)).status == 201
    manifest_digest, _ = await push_image(client, "au/app", "v1", [b"layer"])
    assert (await client.delete(f"/v2/au/copy/blobs/{digest}", headers=AGENT)).status == 202
    assert (await client.delete("/v2/au/app/manifests/v1", headers=AGENT)).status == 202
    assert (await client.delete(f"/v2/au/app/manifests/{manifest_digest}")).status == 202
    assert (await client.delete(f"/v2/au/app/manifests/{manifest_digest}")).status == 404

    lines = audit_lines()
    # The session's start and PATCH are not audited; its commit is.
    commit, mount, cfg, layer, manifest, blob_delete, tag_delete, delete, missing = lines
    assert commit == {
        "event": "audit", "ts": commit["ts"], "action": "push", "repository": "au/app",
        "reference": commit["reference"], "digest": str(digest), "user": None, "remote": "127.0.0.1",
        "agent": "audit-test/1.0", "method": "PUT", "path": commit["path"], "status": 201, "outcome": "success",
    }
    assert commit["path"].startswith("/v2/au/app/blobs/uploads/")
    assert mount["action"] == "mount" and mount["from"] == "au/app" and mount["digest"] == str(digest)
    assert mount["repository"] == "au/copy" and mount["status"] == 201
    assert cfg["action"] == layer["action"] == "push" and cfg["method"] == "POST"
    assert layer["digest"] == str(Digest.of(b"layer"))
    assert manifest["action"] == "push" and manifest["reference"] == "v1" and manifest["tags"] == ["v1"]
    assert manifest["digest"] == str(manifest_digest) and manifest["status"] == 201
    assert blob_delete["action"] == "delete" and blob_delete["digest"] == str(digest)
    assert tag_delete["action"] == "delete" and tag_delete["reference"] == "v1" and tag_delete["digest"] is None
    assert delete["digest"] == str(manifest_digest) and delete["outcome"] == "success"
    assert missing["status"] == 404 and missing["outcome"] == "failure"


async def test_who_and_refusals_with_auth(make_client, audit_lines, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    client = await make_client(auth_htpasswd=htpasswd)
    data = b"by alice"
    resp = await client.post(f"/v2/who/app/blobs/uploads/?digest={Digest.of(data)}", data=data)
    assert resp.status == 401
    resp = await client.post(f"/v2/who/app/blobs/uploads/?digest={Digest.of(data)}", data=data,
                             headers=_basic("alice", "pw"))
    assert resp.status == 201
    resp = await client.put("/v2/who/app/manifests/v1", data=b"{not json", headers={
        **_basic("alice", "pw"), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status == 400
    refused, pushed, invalid = audit_lines()
    assert refused["user"] is None and refused["status"] == 401 and refused["outcome"] == "failure"
    assert refused["action"] == "push" and refused["repository"] == "who/app"
    assert pushed["user"] == "alice" and pushed["status"] == 201
    assert invalid["user"] == "alice" and invalid["status"] == 400 and invalid["tags"] == ["v1"]


async def test_read_only_refusals_are_audited_and_switch_off(make_client, audit_lines, tmp_path):
    ro = await make_client(storage=tmp_path / "ro", read_only=True)
    assert (await ro.delete(f"/v2/x/y/blobs/{Digest.of(b'z')}")).status == 405
    (line,) = audit_lines()
    assert line["action"] == "delete" and line["status"] == 405 and line["repository"] == "x/y"
    quiet = await make_client(storage=tmp_path / "quiet", log_audit=False)
    await push_blob(quiet, "q/app", b"not audited")
    assert len(audit_lines()) == 1
