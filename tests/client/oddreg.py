"""A small in-memory registry (aiohttp) that behaves as real registries do where they
differ from pybuild's own and CNCF Distribution: blob GETs redirected to an object
store's presigned URL on another port, Bearer tokens from a token server that expire,
throttling with ``Retry-After``, odd ``Content-Type`` and ``Content-Encoding`` answers,
and upload ``Location`` forms. Each behaviour is a field of :class:`OddRegistry`."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cas import Digest

_KEY = b"storage-signing-key"


def _sign(path: str, expires: int) -> str:
    return hmac.new(_KEY, f"{path}:{expires}".encode(), hashlib.sha256).hexdigest()


@dataclass
class Storage:
    """An object store answering presigned URLs (``X-Amz-Expires``-like): a wrong or
    expired signature is a 403 with an S3-style XML body."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # path_qs, Authorization, Range
    refuse: int = 0  # answer this many requests 403 "Request has expired" whatever they carry

    def presign(self, base: str, digest: str, ttl: int = 60) -> str:
        path = f"/bucket/docker/blobs/{digest}/data"
        expires = int(time.time()) + ttl
        # Characters that a client must not re-encode: %2F, +, = and the order of keys.
        return (f"{base}{path}?X-Amz-Credential=AKID%2F20260101%2Fus-east-1&X-Amz-Expires={expires}"
                f"&x-id=GetObject&X-Amz-Signature={_sign(path, expires)}+sig==")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.raw_path, request.headers.get("Authorization", ""),
                          request.headers.get("Range", "")))
        query = request.raw_path.partition("?")[2]
        expected = (f"X-Amz-Credential=AKID%2F20260101%2Fus-east-1&X-Amz-Expires="
                    f"{request.query.get('X-Amz-Expires', '')}&x-id=GetObject&X-Amz-Signature="
                    f"{_sign(request.path, int(request.query.get('X-Amz-Expires', '0') or 0))}+sig==")
        expired = int(request.query.get("X-Amz-Expires", "0") or 0) < time.time()
        if self.refuse or query != expected or expired or request.headers.get("Authorization"):
            self.refuse = max(0, self.refuse - 1)
            body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
                    "<Message>Request has expired</Message></Error>")
            return web.Response(status=403, text=body, content_type="application/xml")
        data = self.blobs[request.path.split("/")[-2]]
        return _ranged(request, data)


def _ranged(request: web.Request, data: bytes) -> web.StreamResponse:
    rng = request.headers.get("Range")
    if rng and request.method == "GET":
        start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
        start, end = int(start_s), int(end_s) if end_s else len(data) - 1
        return web.Response(status=206, body=data[start:end + 1], headers={
            "Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})
    if request.method == "HEAD":
        return web.Response(headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes"})
    return web.Response(body=data, headers={"Accept-Ranges": "bytes"})


@dataclass
class OddRegistry:
    """Everything in memory. Fields set before the first request choose the behaviour."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)  # method, path_qs
    # Blob GETs (not HEADs) go to this object store, at this presigned URL base.
    storage: Storage | None = None
    storage_base: str = ""
    # Bearer tokens from /token (realm at this registry): "token" or "access_token".
    bearer: bool = False
    token_field: str = "token"
    token_ttl: float = 60  # expires_in; a token is refused (401) once it has expired
    revoke_after: int = 0  # after this many authorized requests every token is dropped, once
    expired: int = 0  # requests refused because their token had expired or was dropped
    blob_delay: float = 0.0  # seconds each blob GET waits (a long pull)
    close_each: bool = False  # close every connection after its answer, unannounced
    # Every request redirected (307) to this base, the repository under "mirror/" there
    redirect_all: str = ""
    auth_seen: list[tuple[str, str]] = field(default_factory=list)  # Host, Authorization
    users: dict[str, str] = field(default_factory=dict)  # none: anonymous tokens only
    refresh_tokens: set[str] = field(default_factory=set)  # taken by the OAuth2 POST
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    token_throttle: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # /token first
    # Answers to send before the real one: (status, headers) per request that matches.
    throttle: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    throttle_match: Callable[[web.Request], bool] = lambda r: True
    # Manifests: Content-Type as served (None: the stored media type), the digest header.
    manifest_type: Callable[[str], str] | None = None
    digest_header: bool = True
    gzip_json: bool = False  # JSON answers are sent gzipped, whatever the client accepts
    # Uploads: what Location looks like, and what the answers are.
    location: str = "relative"  # relative, absolute, state (with ?_state=), upper, other
    other_base: str = ""  # where location="other" points (another port serving this app)
    # OCI-Chunk-Min-Length: an upload with a smaller PATCH (but the last) is refused.
    chunk_min: int = 0
    chunks: dict[str, list[int]] = field(default_factory=dict)  # upload -> PATCH sizes
    post_status: int = 202
    patch_status: int = 202
    patch_location: bool = True
    put_status: int = 201
    put_location: bool = True
    manifest_put_status: int = 201
    uploads: dict[str, bytearray] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> when it expires
    authorized: int = 0
    granted: dict[str, set[str]] = field(default_factory=dict)  # token -> its scopes
    tags_page: int = 0  # tag lists in pages of this many (a Link to the next)
    tags_rel: str = '"next"'  # or next, unquoted, as some registries write it
    tags_loop: bool = False  # every page's Link names the same page (a broken paginator)
    bare_401: bool = False  # a 401 says no WWW-Authenticate (but the /v2/ ping's does)
    blob_scope: str = ""  # a scope blob requests need besides the repository's (a 401 then)
    # (repository, digest) of the blobs each repository holds
    links: set[tuple[str, str]] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30, middlewares=[self._closing])
        app.router.add_route("*", "/token", self.token)
        app.router.add_route("*", "/v2/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def _closing(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``close_each``: the connection is closed after each answer, which does not
        say so (no ``Connection: close``), as some proxies and load balancers do."""
        resp = await handler(request)
        if self.close_each and request.transport is not None:
            await resp.prepare(request)
            await resp.write_eof()
            request.transport.close()
        return resp

    # --- auth -------------------------------------------------------------------------------
    async def token(self, request: web.Request) -> web.Response:
        if request.method == "POST":  # OAuth2: a refresh token for an access token
            form = await request.post()
            self.token_requests.append({"scope": str(form.get("scope", "")).split(),
                                        "service": form.get("service"), "auth": "",
                                        "grant": form.get("grant_type")})
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in self.refresh_tokens:
                return web.json_response({"error": "invalid_grant"}, status=400)
            token = uuid.uuid4().hex
            self.tokens[token] = time.monotonic() + self.token_ttl
            self.granted[token] = set(self.token_requests[-1]["scope"])
            return web.json_response({"access_token": token, "expires_in": self.token_ttl})
        self.token_requests.append({"scope": request.query.getall("scope", []),
                                    "service": request.query.get("service"),
                                    "account": request.query.get("account"),
                                    "auth": request.headers.get("Authorization", "")})
        if self.token_throttle:
            status, headers = self.token_throttle.pop(0)
            return web.Response(status=status, headers=headers, text="busy")
        auth = request.headers.get("Authorization", "")
        if self.users and auth:
            user, _, password = base64.b64decode(auth.split()[1]).decode().partition(":")
            if self.users.get(user) != password or user == "<token>":
                return web.json_response({"details": "incorrect username or password"}, status=401)
        token = uuid.uuid4().hex
        self.token_requests[-1]["token"] = token
        self.tokens[token] = time.monotonic() + self.token_ttl
        self.granted[token] = set(request.query.getall("scope", []))
        return web.json_response({self.token_field: token, "expires_in": self.token_ttl,
                                  "issued_at": "2026-01-01T00:00:00Z"})

    def _authorized(self, request: web.Request, scope: str) -> web.Response | None:
        if not self.bearer:
            return None
        sent = request.headers.get("Authorization", "")
        token = sent.removeprefix("Bearer ")
        if (sent.startswith("Bearer ") and self.tokens.get(token, 0) > time.monotonic()
                and _actions(scope.split(" ")) <= _actions(self.granted.get(token, set()))):
            self.authorized += 1
            if self.authorized == self.revoke_after:
                self.tokens.clear()
            return None
        if sent:
            self.expired += 1
        if self.bare_401:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "no"}]}, status=401)
        host = request.host
        challenge = (f'Bearer realm="http://{host}/token",service="odd.example",scope="{scope}"'
                     + (',error="invalid_token"' if sent else ""))
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                 status=401, headers={"WWW-Authenticate": challenge})

    # --- the API ----------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.log.append((request.method, request.raw_path))
        self.auth_seen.append((request.host, request.headers.get("Authorization", "")))
        path = request.match_info["tail"]
        if self.throttle and self.throttle_match(request):
            status, headers = self.throttle.pop(0)
            return web.json_response({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                                     status=status, headers=headers)
        if path == "":
            if self.bearer and not request.headers.get("Authorization"):
                return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "log in"}]}, status=401,
                                         headers={"WWW-Authenticate": f'Bearer realm="http://{request.host}'
                                                                      '/token",service="odd.example"'})
            return self._json({})
        name, kind, rest = _split(path)
        push = request.method not in ("GET", "HEAD")
        scope = f"repository:{name}:{'pull,push' if push else 'pull'}"
        if kind == "blobs" and self.blob_scope:
            scope += " " + self.blob_scope
        refused = self._authorized(request, scope)
        if refused is not None:
            return refused
        if self.redirect_all:  # a front that sends every request to another registry
            return web.Response(status=307, headers={
                "Location": f"{self.redirect_all}/v2/mirror/{path}?{request.query_string}".rstrip("?")})
        if kind == "manifests":
            return await self._manifest(request, name, rest)
        if kind == "blobs" and rest.startswith("uploads"):
            return await self._upload(request, name, rest.removeprefix("uploads").strip("/"))
        if kind == "blobs":
            data = self.blobs.get(rest) if (name, rest) in self.links else None
            if request.method == "GET":
                await asyncio.sleep(self.blob_delay)
            if data is None:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "no"}]}, status=404)
            if self.storage is not None and request.method == "GET":
                self.storage.blobs[rest] = data
                # Not HTTPTemporaryRedirect: it would normalise the URL (%2F -> /).
                return web.Response(status=307, headers={
                    "Location": self.storage.presign(self.storage_base, rest)})
            return _ranged(request, data)
        if kind == "tags":
            tags = sorted(t for (n, t) in self.manifests if n == name and ":" not in t)
            if not self.tags_page:
                return self._json({"name": name, "tags": tags})
            last = request.query.get("last", "")
            page = [t for t in tags if t > last][:self.tags_page]
            headers = {}
            if page and page[-1] != tags[-1]:
                rel = self.tags_rel
                last = "" if self.tags_loop else page[-1]
                headers["Link"] = f"</v2/{name}/tags/list?n={self.tags_page}&last={last}>; rel={rel}"
            return self._json({"name": name, "tags": page}, headers=headers)
        return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "no"}]}, status=404)

    def _json(self, doc: Any, status: int = 200, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> web.Response:
        body = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        out = dict(headers or {})
        if self.gzip_json:
            body = gzip.compress(body)
            out["Content-Encoding"] = "gzip"
        return web.Response(status=status, body=body, headers=out, content_type=content_type)

    async def _manifest(self, request: web.Request, name: str, ref: str) -> web.StreamResponse:
        if request.method == "PUT":
            body = await request.read()
            media_type = request.headers.get("Content-Type", "")
            digest = str(Digest.of(body))
            self.manifests[(name, ref)] = self.manifests[(name, digest)] = (body, media_type)
            return web.Response(status=self.manifest_put_status, headers={
                "Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest})
        found = self.manifests.get((name, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no"}]}, status=404)
        body, media_type = found
        headers = {"Docker-Content-Digest": str(Digest.of(body))} if self.digest_header else {}
        content_type = self.manifest_type(media_type) if self.manifest_type else media_type
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers={**headers, "Content-Type": content_type})
        resp = self._json(body, headers=headers, content_type="application/json")
        resp.headers["Content-Type"] = content_type
        return resp

    def _upload_url(self, request: web.Request, name: str, uid: str) -> str:
        path = f"/v2/{name}/blobs/uploads/{uid}"
        if self.location == "absolute":
            return f"http://{request.host}{path}"
        if self.location == "state":
            return f"{path}?_state=a%2Fb%3D%3D&hash=x"
        if self.location == "upper":  # this host, spelt otherwise (and the default port)
            return f"HTTP://{request.host.upper()}{path}"
        if self.location == "other":
            return f"{self.other_base}{path}"
        return path

    async def _upload(self, request: web.Request, name: str, uid: str) -> web.StreamResponse:
        if request.method == "POST":
            mount = request.query.get("mount")
            if mount and (request.query.get("from"), mount) in self.links:
                self.links.add((name, mount))
                return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{mount}"})
            uid = uuid.uuid4().hex
            self.uploads[uid] = bytearray()
            headers = {"Location": self._upload_url(request, name, uid), "Range": "0-0"}
            if self.chunk_min:
                headers["OCI-Chunk-Min-Length"] = str(self.chunk_min)
            return web.Response(status=self.post_status, headers=headers)
        if self.location == "state" and request.query.get("_state") != "a/b==":
            return web.json_response({"errors": [{"code": "BLOB_UPLOAD_INVALID", "message": "state"}]},
                                     status=400)
        buf = self.uploads.get(uid)
        if buf is None:
            return web.json_response({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": "no"}]}, status=404)
        if request.method == "GET":
            return web.Response(status=204, headers={"Range": f"0-{max(len(buf) - 1, 0)}",
                                                     "Location": self._upload_url(request, name, uid)})
        data = await request.read()
        if request.method == "PATCH":
            self.chunks.setdefault(uid, []).append(len(data))
            buf += data
            headers = {"Range": f"0-{len(buf) - 1}"}
            if self.patch_location:
                headers["Location"] = self._upload_url(request, name, uid)
            return web.Response(status=self.patch_status, headers=headers)
        if request.method == "PUT":
            if any(n < self.chunk_min for n in self.chunks.get(uid, [])[:-1]):
                return web.json_response({"errors": [{"code": "SIZE_INVALID",
                                                      "message": "a chunk under OCI-Chunk-Min-Length"}]},
                                         status=400)
            buf += data
            digest = request.query.get("digest", "")
            if str(Digest.of(bytes(buf))) != digest:
                return web.json_response({"errors": [{"code": "DIGEST_INVALID", "message": "no"}]}, status=400)
            self.blobs[digest] = bytes(buf)
            self.links.add((name, digest))
            del self.uploads[uid]
            headers = {"Docker-Content-Digest": digest}
            if self.put_location:
                headers["Location"] = f"/v2/{name}/blobs/{digest}"
            return web.Response(status=self.put_status, headers=headers)
        return web.Response(status=405)


def _actions(scopes: Any) -> set[tuple[str, str]]:
    """``repository:a/b:pull,push`` -> ``{("repository:a/b", "pull"), (..., "push")}``."""
    out = set()
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        out.update((resource, a) for a in actions.split(","))
    return out


def _split(path: str) -> tuple[str, str, str]:
    """``a/b/manifests/x`` -> ``("a/b", "manifests", "x")``."""
    for kind in ("/manifests/", "/blobs/", "/tags/"):
        name, sep, rest = path.partition(kind)
        if sep:
            return name, kind.strip("/"), rest
    return path, "", ""
