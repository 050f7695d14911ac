"""Piece-level pushes on the server (``_pybuild/blob/uploads``), spoken as plain HTTP:
discovery, only missing pieces asked for, resume, digest mismatch, hostile plans, and a
hostile client that tries to learn whether pieces it may not read exist (no oracle)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import bcrypt
import blake3
import pytest
from aiohttp.test_utils import TestClient

from cas import Digest
from cas.frames import gzip_member
from registry.client.push_pieces import _MAX_BATCH_PIECES
from registry.server.piece_uploads import MAX_PATCH_PIECES, MAX_PIECE, MAX_PIECES, MAX_PLAN_BYTES
from registry.server.state import REGISTRY

from .conftest import MakeClient
from .helpers import error_codes, push_blob

TOKENS = Path(__file__).parent / "testfiles" / "tokens"
UPLOADS = "_pybuild/blob/uploads/"


def layer(seeds: list[int]) -> tuple[bytes, list[tuple[str, int]]]:
    """A layer of one gzip member per seed (cut at member boundaries) and its pieces."""
    members = [gzip_member(random.Random(s).randbytes(40_000), level=1) for s in seeds]
    return b"".join(members), [(blake3.blake3(m).hexdigest(), len(m)) for m in members]


def members(blob: bytes, pieces: list[tuple[str, int]]) -> list[bytes]:
    out, pos = [], 0
    for _, n in pieces:
        out.append(blob[pos : pos + n])
        pos += n
    return out


def plan(blob: bytes, pieces: list[tuple[str, int]], bases: list[dict[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    return json.dumps({
        "digest": str(Digest.of(blob)), "size": len(blob),
        "pieces": [{"key": k, "length": n} for k, n in pieces], "bases": list(bases),
    }).encode()


async def start(client: TestClient, repo: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return await client.post(f"/v2/{repo}/{UPLOADS}", data=io.BytesIO(body), headers=headers or {})


async def send(client: TestClient, location: str, blob: bytes, pieces: list[tuple[str, int]],
               indices: list[int], headers: dict[str, str] | None = None) -> Any:
    data = members(blob, pieces)
    return await client.patch(
        location, data=io.BytesIO(b"".join(data[i] for i in indices)),
        headers={"Pybuild-Pieces": ",".join(f"{pieces[i][1]}:{pieces[i][0]}" for i in indices),
                 **(headers or {})},
    )


async def test_discovery_lists_piece_uploads(client: TestClient) -> None:
    resp = await client.get("/v2/any/repo/_oci/ext/discover")
    doc = await resp.json()
    pybuild = next(e for e in doc["extensions"] if e["name"] == "_pybuild")
    assert "_pybuild/blob/uploads" in pybuild["endpoints"]
    assert "_pybuild/blob/recipe" in pybuild["endpoints"]


async def test_read_only_registry_does_not_offer_piece_uploads(make_client: MakeClient) -> None:
    client = await make_client(read_only=True)
    doc = await (await client.get("/v2/any/_oci/ext/discover")).json()
    pybuild = next(e for e in doc["extensions"] if e["name"] == "_pybuild")
    assert pybuild["endpoints"] == ["_pybuild/blob/recipe"]


async def test_push_of_v2_asks_only_for_changed_pieces(client: TestClient) -> None:
    v1, _ = layer(list(range(20)))
    await push_blob(client, "team/app", v1)
    seeds = list(range(20))
    seeds[3], seeds[17] = 1003, 1017
    v2, p2 = layer(seeds)
    base = [{"digest": str(Digest.of(v1))}]
    resp = await start(client, "team/app", plan(v2, p2, base))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["missing"] == [3, 17]
    location = resp.headers["Location"]
    resp = await send(client, location, v2, p2, [3, 17])
    assert resp.status == 202, await resp.text()
    resp = await client.put(f"{location}?digest={Digest.of(v2)}", data=plan(v2, p2, base))
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == str(Digest.of(v2))
    got = await client.get(f"/v2/team/app/blobs/{Digest.of(v2)}")
    assert await got.read() == v2
    recipe = await (await client.get(f"/v2/team/app/_pybuild/blob/recipe?digest={Digest.of(v2)}")).json()
    assert [(p["key"], p["length"]) for p in recipe["pieces"]] == p2
    # The session is gone.
    assert (await client.get(location)).status == 404


async def test_commit_of_another_plan_than_stated_is_hashed_anew(client: TestClient) -> None:
    """The registry hashes the stated plan's blob ahead of the commit; a commit that
    closes another recipe (the same pieces in another order) is checked on its own."""
    v1, _ = layer(list(range(40, 60)))
    await push_blob(client, "team/app", v1)
    seeds = list(range(40, 60))
    seeds[5] = 1045
    v2, p2 = layer(seeds)
    base = [{"digest": str(Digest.of(v1))}]
    resp = await start(client, "team/app", plan(v2, p2, base))
    location = resp.headers["Location"]
    assert (await send(client, location, v2, p2, [5])).status == 202
    await asyncio.sleep(0.2)  # time for the hash ahead of the stated plan
    parts = members(v2, p2)
    order = [5, *range(5), *range(6, 20)]
    other = b"".join(parts[i] for i in order)
    p_other = [p2[i] for i in order]
    resp = await client.put(f"{location}?digest={Digest.of(v2)}", data=plan(other, p_other, base))
    assert resp.status == 400  # the plan closes another blob than the digest names
    resp = await client.put(f"{location}?digest={Digest.of(other)}",
                            data=plan(other, p_other, base))
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/team/app/blobs/{Digest.of(other)}")
    assert await got.read() == other
    assert (await client.head(f"/v2/team/app/blobs/{Digest.of(v2)}")).status == 404


async def test_piece_sessions_are_not_ordinary_upload_sessions(client: TestClient) -> None:
    blob, pieces = layer([150, 151])
    resp = await start(client, "team/app", plan(blob, pieces))
    upload_id = resp.headers["Docker-Upload-UUID"]
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await client.request(method, f"/v2/team/app/blobs/uploads/{upload_id}?digest={Digest.of(blob)}")
        assert resp.status == 404, method
        assert await error_codes(resp) == ["BLOB_UPLOAD_UNKNOWN"]
    # Nor a session of another repository.
    assert (await client.get(f"/v2/team/other/{UPLOADS}{upload_id}")).status == 404


async def test_interrupted_push_resumes_with_only_what_is_missing(client: TestClient) -> None:
    blob, pieces = layer(list(range(100, 110)))
    body = plan(blob, pieces)
    resp = await start(client, "team/app", body)
    location = resp.headers["Location"]
    assert (await resp.json())["missing"] == list(range(10))
    assert (await send(client, location, blob, pieces, [0, 1, 2, 5])).status == 202
    status = await (await client.get(location)).json()
    assert status == {"pieces": 4, "bytes": sum(pieces[i][1] for i in (0, 1, 2, 5))}
    resp = await client.post(location, data=body)
    assert resp.status == 200
    assert (await resp.json())["missing"] == [3, 4, 6, 7, 8, 9]
    # Committing early names what is missing and keeps the session.
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=body)
    assert resp.status == 400
    doc = await resp.json()
    assert doc["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert doc["errors"][0]["detail"]["missing"] == [3, 4, 6, 7, 8, 9]
    assert (await send(client, location, blob, pieces, [3, 4, 6, 7, 8, 9])).status == 202
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=body)
    assert resp.status == 201, await resp.text()


async def test_session_survives_a_restart(make_client: MakeClient, tmp_path: Path) -> None:
    blob, pieces = layer(list(range(200, 206)))
    body = plan(blob, pieces)
    first = await make_client(storage=tmp_path / "s")
    resp = await start(first, "team/app", body)
    location = resp.headers["Location"]
    assert (await send(first, location, blob, pieces, [0, 1, 2])).status == 202
    await first.close()
    second = await make_client(storage=tmp_path / "s")
    resp = await second.post(location, data=body)
    assert (await resp.json())["missing"] == [3, 4, 5]
    assert (await send(second, location, blob, pieces, [3, 4, 5])).status == 202
    assert (await second.put(f"{location}?digest={Digest.of(blob)}", data=body)).status == 201


async def test_digest_mismatch_never_commits(client: TestClient) -> None:
    blob, pieces = layer([300, 301, 302])
    wrong = b"x" + blob[1:]
    body = json.loads(plan(blob, pieces))
    body["digest"] = str(Digest.of(wrong))
    resp = await start(client, "team/app", json.dumps(body).encode())
    location = resp.headers["Location"]
    assert (await send(client, location, blob, pieces, [0, 1, 2])).status == 202
    resp = await client.put(f"{location}?digest={Digest.of(wrong)}", data=json.dumps(body).encode())
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]
    for digest in (Digest.of(wrong), Digest.of(blob)):
        assert (await client.head(f"/v2/team/app/blobs/{digest}")).status == 404
    assert (await client.get(location)).status == 404


async def test_a_piece_that_does_not_match_its_key_is_refused(client: TestClient) -> None:
    blob, pieces = layer([400, 401])
    resp = await start(client, "team/app", plan(blob, pieces))
    location = resp.headers["Location"]
    data = members(blob, pieces)
    resp = await client.patch(location, data=data[1] + data[1], headers={
        "Pybuild-Pieces": f"{pieces[0][1]}:{pieces[0][0]},{pieces[1][1]}:{pieces[1][0]}"})
    assert resp.status == 400
    assert await error_codes(resp) in (["DIGEST_INVALID"], ["SIZE_INVALID"])
    status = await (await client.get(location)).json()
    assert status == {"pieces": 0, "bytes": 0}


def _hostile_plans() -> dict[str, tuple[bytes, int]]:
    blob, pieces = layer([500, 501, 502])
    doc = json.loads(plan(blob, pieces))
    overlap = json.loads(plan(blob, pieces))
    overlap["pieces"][1]["offset"] = 10
    gap = json.loads(plan(blob, pieces))
    gap["pieces"][2]["offset"] = doc["size"] + 5
    big_piece = json.loads(plan(blob, pieces))
    big_piece["pieces"][0]["length"] = 1 << 40
    zero = json.loads(plan(blob, pieces))
    zero["pieces"][0]["length"] = 0
    bad_key = json.loads(plan(blob, pieces))
    bad_key["pieces"][0]["key"] = "../../etc/passwd"
    wrong_size = dict(doc, size=doc["size"] + 1)
    huge_blob = dict(doc, pieces=[{"key": "0" * 64, "length": 1 << 24}] * 4097, size=4097 << 24)
    many = dict(doc, pieces=[{"key": "0" * 64, "length": 1}] * (MAX_PIECES + 1), size=MAX_PIECES + 1)
    bases = dict(doc, bases=[{"digest": str(Digest.of(b"x"))}] * 65)
    bad_base = dict(doc, bases=[{"digest": str(Digest.of(b"x")), "repository": "../x"}])
    return {
        "not json": (b"{nope", 400),
        "nested too deeply": (b"[" * 100_000 + b"]" * 100_000, 400),
        "not an object": (b"[1, 2]", 400),
        "overlapping pieces": (json.dumps(overlap).encode(), 400),
        "gap": (json.dumps(gap).encode(), 400),
        "huge piece": (json.dumps(big_piece).encode(), 400),
        "empty piece": (json.dumps(zero).encode(), 400),
        "bad key": (json.dumps(bad_key).encode(), 400),
        "size disagrees": (json.dumps(wrong_size).encode(), 400),
        "too many pieces": (json.dumps(many).encode(), 400),
        "blob too large": (json.dumps(huge_blob).encode(), 400),
        "too many bases": (json.dumps(bases).encode(), 400),
        "bad base repository": (json.dumps(bad_base).encode(), 400),
        "over the body limit": (b" " * (MAX_PLAN_BYTES + 1), 400),
        "bad digest": (json.dumps(dict(doc, digest="sha256:zz")).encode(), 400),
    }


@pytest.mark.parametrize("case", sorted(_hostile_plans()))
async def test_hostile_plans_get_clear_400s(client: TestClient, case: str) -> None:
    body, status = _hostile_plans()[case]
    resp = await start(client, "team/app", body)
    assert resp.status == status, await resp.text()
    doc = await resp.json()
    assert doc["errors"][0]["code"] in ("BLOB_UPLOAD_INVALID", "DIGEST_INVALID", "SIZE_INVALID")
    assert doc["errors"][0]["message"]
    # The server still serves.
    assert (await client.get("/v2/")).status == 200


@pytest.mark.parametrize("header", [
    "", "12:abc", "x:" + "0" * 64, "0:" + "0" * 64, f"{1 << 30}:" + "0" * 64,
    ",".join([f"1:{'0' * 64}"] * (MAX_PATCH_PIECES + 1)),
])
async def test_hostile_piece_lists_get_clear_400s(client: TestClient, header: str) -> None:
    blob, pieces = layer([600])
    resp = await start(client, "team/app", plan(blob, pieces))
    location = resp.headers["Location"]
    resp = await client.patch(location, data=b"x", headers={"Pybuild-Pieces": header} if header else {})
    assert resp.status == 400, await resp.text()
    assert (await client.get(location)).status == 200


async def test_a_patch_of_the_most_pieces_allowed_fits_in_one_header(client: TestClient) -> None:
    # Small pieces (frames of 16 KiB and less, as zstd:chunked and eStargz layers have)
    # come MAX_PATCH_PIECES to a request; their list, with the longest lengths a piece
    # may have, stays under the 8 KiB a header line may be.
    blob, pieces = layer(list(range(800, 800 + MAX_PATCH_PIECES)))
    resp = await start(client, "team/many", plan(blob, pieces))
    location = resp.headers["Location"]
    assert len(",".join([f"{MAX_PIECE}:{'0' * 64}"] * MAX_PATCH_PIECES)) < 8190
    resp = await send(client, location, blob, pieces, list(range(len(pieces))))
    assert resp.status == 202, await resp.text()
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=plan(blob, pieces))
    assert resp.status == 201, await resp.text()
    assert _MAX_BATCH_PIECES <= MAX_PATCH_PIECES  # what pybuild's client sends at most


async def test_commit_of_pieces_never_uploaded_is_refused(client: TestClient) -> None:
    blob, pieces = layer([700, 701])
    other, _ = layer([702])
    await push_blob(client, "team/app", blob)  # the pieces exist, but no base names them
    body = plan(blob, pieces)
    resp = await start(client, "team/other", body)
    location = resp.headers["Location"]
    assert (await resp.json())["missing"] == [0, 1]
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=body)
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["detail"]["missing"] == [0, 1]
    assert (await client.head(f"/v2/team/other/blobs/{Digest.of(blob)}")).status == 404
    assert len(other) > 0


# --- no oracle ---------------------------------------------------------------------------
def _basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()}


async def _token(client: TestClient, user: str, *scopes: str) -> dict[str, str]:
    params = [("service", "pybuild-registry"), *(("scope", s) for s in scopes)]
    resp = await client.get("/token", params=params, headers=_basic(user))
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


async def _token_registry(make_client: MakeClient, tmp_path: Path, name: str) -> TestClient:
    root = tmp_path / name
    root.mkdir()
    htpasswd = root / "htpasswd"
    htpasswd.write_text("".join(
        f"{u}:{bcrypt.hashpw(b'pw-' + u.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for u in ("alice", "admin")
    ))
    shutil.copy(TOKENS / "access.yaml", root / "access.yaml")
    return await make_client(storage=root / "storage", auth_htpasswd=htpasswd,
                             auth_token_issue_key=root / "token.pem",
                             auth_token_issue_policy=root / "access.yaml")


async def _probe(client: TestClient, secret: bytes, pieces: list[tuple[str, int]]) -> list[Any]:
    """What alice (pull and push on team/*, nothing on secret/*) can observe when she asks
    about the pieces of ``secret``: every status and body, with session ids taken out."""
    seen: list[Any] = []
    auth = await _token(client, "alice", "repository:team/probe:pull,push",
                        "repository:secret/vault:pull")
    bases_variants: list[list[dict[str, str]]] = [
        [], [{"digest": str(Digest.of(secret))}],
        [{"digest": str(Digest.of(secret)), "repository": "secret/vault"}],
    ]
    for bases in bases_variants:
        body = plan(secret, pieces, bases)
        resp = await start(client, "team/probe", body, auth)
        seen.append((resp.status, await resp.json()))
        location = resp.headers["Location"]
        resp = await client.post(location, data=body, headers=auth)
        seen.append((resp.status, await resp.json()))
        resp = await client.put(f"{location}?digest={Digest.of(secret)}", data=body, headers=auth)
        doc = await resp.json()
        seen.append((resp.status, doc))
        # Proving possession: sending the bytes is answered alike, and then commits.
        resp = await send(client, location, secret, pieces, list(range(len(pieces))), auth)
        seen.append((resp.status, await resp.read()))
        resp = await client.put(f"{location}?digest={Digest.of(secret)}", data=body, headers=auth)
        seen.append((resp.status, await resp.read()))
        await client.delete(f"/v2/team/probe/blobs/{Digest.of(secret)}",
                            headers=await _token(client, "admin", "repository:team/probe:*"))
    # The recipe and blob of the secret blob, through her own repository: unknown.
    resp = await client.get(f"/v2/team/probe/_pybuild/blob/recipe?digest={Digest.of(secret)}",
                            headers=auth)
    seen.append(resp.status)
    return seen


async def test_no_oracle_for_pieces_of_repositories_the_caller_cannot_pull(
    make_client: MakeClient, tmp_path: Path,
) -> None:
    secret, pieces = layer([900, 901, 902, 903])
    with_secret = await _token_registry(make_client, tmp_path, "with")
    without = await _token_registry(make_client, tmp_path, "without")
    admin = await _token(with_secret, "admin", "repository:secret/vault:*")
    resp = await with_secret.post(f"/v2/secret/vault/blobs/uploads/?digest={Digest.of(secret)}",
                                  data=secret, headers=admin)
    assert resp.status == 201
    assert (await with_secret.head(f"/v2/secret/vault/blobs/{Digest.of(secret)}",
                                   headers=admin)).status == 200
    here = await _probe(with_secret, secret, pieces)
    there = await _probe(without, secret, pieces)
    assert here == there
    # Every piece was asked for each time, and her own pushes committed in both.
    assert here[0] == (202, {"missing": [0, 1, 2, 3]})
    assert here[4][0] == 201
    # A session she opened she may cancel with her push access (no delete right needed).
    auth = await _token(without, "alice", "repository:team/probe:pull,push")
    resp = await start(without, "team/probe", plan(secret, pieces), auth)
    assert (await without.delete(resp.headers["Location"], headers=auth)).status == 204


def _cut(blob: bytes, lengths: list[int]) -> list[tuple[str, int]]:
    out, pos = [], 0
    for n in lengths:
        out.append((blake3.blake3(blob[pos : pos + n]).hexdigest(), n))
        pos += n
    return out


async def _piece_push(client: TestClient, repo: str, blob: bytes, pieces: list[tuple[str, int]],
                      auth: dict[str, str], bases: list[dict[str, str]] = ()) -> list[Any]:  # type: ignore[assignment]
    """A piece push of ``blob`` cut as ``pieces``, sending what is asked for: every answer."""
    body = plan(blob, pieces, bases)
    resp = await start(client, repo, body, auth)
    seen: list[Any] = [(resp.status, await resp.json())]
    location = resp.headers["Location"]
    resp = await send(client, location, blob, pieces, seen[0][1]["missing"], auth)
    seen.append((resp.status, await resp.read()))
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=body, headers=auth)
    seen.append((resp.status, await resp.read()))
    return seen


async def _probe_recipes(client: TestClient, secret: bytes, pieces: list[tuple[str, int]]) -> list[Any]:
    """What alice sees of her own pushes of ``secret``'s bytes (cut her way, or by the
    registry), and of a v2 pushed over them: every status and body, recipes included."""
    seen: list[Any] = []
    repos = ["team/pieces", "team/mono", "team/chunked", "team/mounted", "team/v2", "team/v2mono"]
    auth = await _token(client, "alice", *(f"repository:{r}:pull,push" for r in repos))
    digest = Digest.of(secret)

    async def recipe(repo: str, blob: bytes) -> Any:
        resp = await client.get(f"/v2/{repo}/_pybuild/blob/recipe?digest={Digest.of(blob)}",
                                headers=auth)
        return resp.status, await resp.json()

    # (a) a piece push, cut at its gzip members
    seen.append(await _piece_push(client, "team/pieces", secret, pieces, auth))
    seen.append(await recipe("team/pieces", secret))
    # (b) an ordinary monolithic upload: the registry cuts it
    resp = await client.post(f"/v2/team/mono/blobs/uploads/?digest={digest}", data=secret,
                             headers=auth)
    seen.append((resp.status, await resp.read()))
    seen.append(await recipe("team/mono", secret))
    # (c) a chunked upload (POST, PATCH, PATCH, PUT)
    resp = await client.post("/v2/team/chunked/blobs/uploads/", headers=auth)
    location, half = resp.headers["Location"], len(secret) // 2
    for lo, hi in ((0, half), (half, len(secret))):
        resp = await client.patch(location, data=secret[lo:hi], headers={
            **auth, "Content-Range": f"{lo}-{hi - 1}", "Content-Type": "application/octet-stream"})
        seen.append(resp.status)
        location = resp.headers["Location"]
    resp = await client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}",
                            headers=auth)
    seen.append((resp.status, await resp.read()))
    seen.append(await recipe("team/chunked", secret))
    # A mount reads as its source does.
    resp = await client.post(f"/v2/team/mounted/blobs/uploads/?mount={digest}&from=team/pieces",
                             headers=await _token(client, "alice", "repository:team/mounted:pull,push",
                                                  "repository:team/pieces:pull"))
    seen.append(resp.status)
    seen.append(await recipe("team/mounted", secret))
    # (d) v2 over (a) and over (b): the bases' pieces as her repositories see them.
    more = gzip_member(random.Random(905).randbytes(40_000), level=1)
    v2 = secret + more
    v2_pieces = [*pieces, (blake3.blake3(more).hexdigest(), len(more))]
    for repo, base in (("team/v2", "team/pieces"), ("team/v2mono", "team/mono")):
        bases = [{"digest": str(digest), "repository": base}]
        seen.append(await _piece_push(client, repo, v2, v2_pieces, auth, bases))
        seen.append(await recipe(repo, v2))
        resp = await client.get(f"/v2/{repo}/blobs/{Digest.of(v2)}", headers=auth)
        seen.append((resp.status, await resp.read() == v2))
    # Pushed again cut as the vault's: that is the recipe now (its own is forgotten).
    seen.append(await _piece_push(client, "team/pieces", secret, _thirds(secret), auth))
    seen.append(await recipe("team/pieces", secret))
    return seen


def _thirds(blob: bytes) -> list[tuple[str, int]]:
    third = len(blob) // 3
    return _cut(blob, [third, third, len(blob) - 2 * third])


async def test_no_oracle_in_the_recipe_of_a_blob_the_caller_pushed(
    make_client: MakeClient, tmp_path: Path,
) -> None:
    """The store keeps one recipe per blob (the first push's cut). Admin pushes a secret
    blob cut in thirds; alice pushes the same bytes into her repositories, cut her way
    or by the registry: each recipe she reads is her push's cut, and a v2 over them asks
    for and commits the same as in a registry that never held the secret."""
    secret, pieces = layer([910, 911, 912, 913])
    with_secret = await _token_registry(make_client, tmp_path, "with")
    without = await _token_registry(make_client, tmp_path, "without")
    admin = await _token(with_secret, "admin", "repository:secret/vault:*")
    pushed = await _piece_push(with_secret, "secret/vault", secret, _thirds(secret), admin)
    assert pushed[2][0] == 201
    here = await _probe_recipes(with_secret, secret, pieces)
    there = await _probe_recipes(without, secret, pieces)
    assert here == there
    cut = [(p["key"], p["length"]) for p in here[1][1]["pieces"]]
    assert here[1][0] == 200 and cut == pieces  # her own cut, not admin's thirds
    mounted = [(p["key"], p["length"]) for p in here[9][1]["pieces"]]
    assert here[8] == 201 and mounted == pieces
    v2, v2mono = here[10], here[13]
    assert v2[0] == (202, {"missing": [4]}) and v2[2][0] == 201
    assert v2mono[2][0] == 201
    assert here[12] == (200, True) and here[15] == (200, True)
    again = [(p["key"], p["length"]) for p in here[17][1]["pieces"]]
    assert here[16][2][0] == 201 and again == _thirds(secret)


async def test_no_oracle_in_the_recipe_of_a_manifest_the_caller_pushed(
    make_client: MakeClient, tmp_path: Path,
) -> None:
    # The same for a manifest: admin pushed its bytes as a blob cut in thirds; alice
    # pushes them as her manifest and reads its recipe, the same in both registries.
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.note",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                   "digest": str(Digest.of(b"{}")), "data": "e30="},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                    "digest": str(Digest.of(b"{}")), "data": "e30="}],
        "annotations": {"note": "x" * 3000},
    }).encode()
    seen = []
    for name in ("with", "without"):
        client = await _token_registry(make_client, tmp_path, f"manifest-{name}")
        if name == "with":
            admin = await _token(client, "admin", "repository:secret/vault:*")
            assert (await _piece_push(client, "secret/vault", manifest, _thirds(manifest), admin))[2][0] == 201
        auth = await _token(client, "alice", "repository:team/notes:pull,push")
        resp = await client.put("/v2/team/notes/manifests/v1", data=manifest, headers={
            **auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert resp.status == 201, await resp.text()
        resp = await client.get(f"/v2/team/notes/_pybuild/blob/recipe?digest={Digest.of(manifest)}",
                                headers=auth)
        seen.append((resp.status, await resp.json()))
    assert seen[0] == seen[1]
    assert len(seen[0][1]["pieces"]) == 1  # the registry's cut of her push, not admin's thirds


async def test_no_resume_from_kept_states_of_a_base_the_caller_cannot_pull(
    make_client: MakeClient, tmp_path: Path,
) -> None:
    """The registry keeps SHA-256 states and starts a piece push's hash from a readable
    base's; a base alice may not pull is not looked at: her answers are those of a plan
    without it, and its state is not used (while the same base in her own repository is)."""
    v1, _ = layer(list(range(500, 540)))  # ~1.6 MB: states after 1 MiB
    seeds = list(range(500, 540))
    seeds[36] = 1536
    v2, p2 = layer(seeds)
    client = await _token_registry(make_client, tmp_path, "states")
    reg = client.server.app[REGISTRY]
    admin = await _token(client, "admin", "repository:secret/vault:*")
    resp = await client.post(f"/v2/secret/vault/blobs/uploads/?digest={Digest.of(v1)}",
                             data=io.BytesIO(v1), headers=admin)
    assert resp.status == 201
    states = tmp_path / "states" / "storage" / "states"
    assert (states / Digest.of(v1).encoded).exists()
    auth = await _token(client, "alice", "repository:team/probe:pull,push",
                        "repository:secret/vault:pull")

    async def push(bases: list[dict[str, str]]) -> tuple[list[Any], Any]:
        seen: list[Any] = []
        body = plan(v2, p2, bases)
        resp = await start(client, "team/probe", body, auth)
        seen.append((resp.status, await resp.json()))
        location, upload = resp.headers["Location"], resp.headers["Docker-Upload-UUID"]
        ingest = reg.ingests[upload]
        missing = (await resp.json())["missing"]
        resp = await send(client, location, v2, p2, missing, auth)
        seen.append((resp.status, await resp.read()))
        for _ in range(500):  # the hash ahead, as far as it goes
            if ingest.hashed_ahead == len(p2):
                break
            await asyncio.sleep(0.01)
        resp = await client.put(f"{location}?digest={Digest.of(v2)}", data=body, headers=auth)
        seen.append((resp.status, await resp.read()))
        await client.delete(f"/v2/team/probe/blobs/{Digest.of(v2)}",
                            headers=await _token(client, "admin", "repository:team/probe:*"))
        return seen, ingest

    secret = [{"digest": str(Digest.of(v1)), "repository": "secret/vault"}]
    plain, _ = await push([])
    hidden, ingest = await push(secret)
    assert hidden == plain
    assert plain[0] == (202, {"missing": list(range(len(p2)))})
    assert plain[2][0] == 201
    assert ingest.resumed_offset == 0
    # The same base where she may pull it: its pieces are not asked for, and the hash
    # starts from its state after 1 MiB.
    mine = await _token(client, "alice", "repository:team/base:pull,push")
    resp = await client.post(f"/v2/team/base/blobs/uploads/?digest={Digest.of(v1)}",
                             data=io.BytesIO(v1), headers=mine)
    assert resp.status == 201
    auth = await _token(client, "alice", "repository:team/probe:pull,push",
                        "repository:team/base:pull")
    readable, ingest = await push([{"digest": str(Digest.of(v1)), "repository": "team/base"}])
    assert readable[0] == (202, {"missing": [36]})
    assert readable[2][0] == 201
    assert ingest.resumed_offset == 1 << 20 and ingest.rehashed == 0
    got = await client.get(f"/v2/team/base/blobs/{Digest.of(v1)}", headers=mine)
    assert await got.read() == v1


async def test_a_body_cut_half_way_keeps_nothing_and_the_session_goes_on(client: TestClient) -> None:
    blob, pieces = layer([800, 801])
    resp = await start(client, "team/app", plan(blob, pieces))
    location = resp.headers["Location"]
    data = members(blob, pieces)
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data[0])}\r\n"
        f"Pybuild-Pieces: {pieces[0][1]}:{pieces[0][0]}\r\n\r\n".encode() + data[0][:1000]
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)
    status = await (await client.get(location)).json()
    assert status == {"pieces": 0, "bytes": 0}
    assert (await send(client, location, blob, pieces, [0, 1])).status == 202
    body = plan(blob, pieces)
    assert (await client.put(f"{location}?digest={Digest.of(blob)}", data=body)).status == 201


async def test_a_piece_sent_again_adds_no_bytes_to_the_session(client: TestClient) -> None:
    # The session's bytes (its status, and what the upload limits count) grow by the
    # pieces it did not hold yet: sending one piece sixteen times is one piece's bytes.
    blob, pieces = layer([900, 901])
    resp = await start(client, "team/dup", plan(blob, pieces))
    location = resp.headers["Location"]
    for _ in range(8):
        assert (await send(client, location, blob, pieces, [0, 0])).status == 202
    assert await (await client.get(location)).json() == {"pieces": 1, "bytes": pieces[0][1]}
    assert (await send(client, location, blob, pieces, [1, 0])).status == 202
    assert await (await client.get(location)).json() == {"pieces": 2, "bytes": len(blob)}
    resp = await client.put(f"{location}?digest={Digest.of(blob)}", data=plan(blob, pieces))
    assert resp.status == 201, await resp.text()
