"""Dataset uploads through a real gateway on loopback (harness/replicas.py), into both stores: a
directory, and a bucket of a real S3-compatible server (SeaweedFS, harness/s3server.py; the S3
cases fail, never skip, when its binary is missing). The clients are plain HTTP (httpx) and, for
a connection dropped mid-chunk, a raw socket."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from graft.core import s3 as core_s3
from graft.gateway import apikeys
from graft.gateway.catalog import build
from graft.gateway.main import uploads_uri
from graft.gateway.server import Settings
from graft.gateway.uploads import check_file_name, upload_id
from harness.replicas import Loop, RunningGateway, StaticView, api_key_object, meta
from harness.s3server import S3Server

MiB = 1024 * 1024
SIZE = 20_000_000
CHUNK = 8 * MiB
MAX_BYTES = 30_000_000


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(12).randbytes(SIZE)


@dataclass
class Backend:
    uri: str
    s3: S3Server | None
    bucket: str | None

    def stored(self, uri: str) -> bytes | None:
        """The bytes at a file:// or s3:// URI the gateway answered, None when there are none."""
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme == "file":
            path = Path(urllib.parse.unquote(parsed.path))
            return path.read_bytes() if path.is_file() else None
        assert self.s3 is not None
        bucket, key = core_s3.split_uri(uri)
        return self.s3.get(bucket, key)

    def everything(self) -> list[str]:
        """Every file or object in the store."""
        if self.s3 is None:
            root = Path(urllib.parse.urlparse(self.uri).path)
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert self.bucket is not None
        return self.s3.keys(self.bucket)


class World:
    """Account a with a member (alice), a viewer (victor) and an admin (ada); account b with a
    member (bob). Each has a key; the gateway stores uploads at `backend`."""

    def __init__(self, loop: Loop, uri: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loop = loop
        self.keys = {
            name: apikeys.generate() for name in ("alice", "victor", "ada", "bob", "no-role")
        }
        users = [("alice", "a", "member"), ("victor", "a", "viewer"), ("ada", "a", "admin")]
        users += [("bob", "b", "member"), ("no-role", "a", None)]
        catalog = build(
            accounts=[{"metadata": meta("a"), "spec": {}}, {"metadata": meta("b"), "spec": {}}],
            users=[
                {"metadata": meta(u, ns), "spec": {"role": role} if role else {}}
                for u, ns, role in users
            ],
            api_keys=[api_key_object(ns, u, self.keys[u]) for u, ns, _ in users],
        )
        self.view = StaticView(catalog, [], {})
        settings = Settings(uploads_uri=uri, max_upload_bytes=MAX_BYTES)
        self.gw = RunningGateway(loop, self.view, settings)
        loop.run(self.gw.start())
        self.http = httpx.Client(base_url=self.gw.url, timeout=120)

    def close(self) -> None:
        self.http.close()
        self.loop.run(self.gw.stop())

    def auth(self, user: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user].key}"} if user else {}

    def post(self, user: str | None, body: dict[str, Any], account: str = "a") -> httpx.Response:
        return self.http.post(f"/v1/accounts/{account}/uploads", json=body, headers=self.auth(user))

    def get(self, user: str | None, up: str, account: str = "a") -> httpx.Response:
        return self.http.get(f"/v1/accounts/{account}/uploads/{up}", headers=self.auth(user))

    def put(
        self, user: str | None, up: str, offset: int, chunk: bytes, account: str = "a"
    ) -> httpx.Response:
        headers = {**self.auth(user), "Upload-Offset": str(offset)}
        return self.http.put(f"/v1/accounts/{account}/uploads/{up}", content=chunk, headers=headers)

    def create(self, data: bytes, name: str = "train.jsonl", sha: str | None = None) -> Any:
        body = {"fileName": name, "size": len(data), "sha256": sha or sha256(data)}
        r = self.post("alice", body)
        assert r.status_code == 200, r.text
        return r.json()

    def send(self, up: str, data: bytes, offset: int, until: int | None = None) -> httpx.Response:
        """PUT chunks from `offset` to `until` (the end), following 409s; the last answer."""
        end = len(data) if until is None else until
        answer: httpx.Response | None = None
        while offset < end or answer is None:
            answer = self.put("alice", up, offset, data[offset : min(offset + CHUNK, end)])
            if answer.status_code == 409:
                offset = answer.json()["offset"]
                time.sleep(0.05)  # another request still writes: let it end
                continue
            if answer.status_code != 200:
                return answer
            offset = answer.json()["offset"]
        return answer


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BACKENDS = ["directory", pytest.param("s3", marks=pytest.mark.s3)]


def make_backend(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if kind == "directory":
        root = tmp_path / "artifacts"
        root.mkdir()
        return Backend(root.as_uri(), None, None)
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"uploads-{uuid.uuid4().hex[:16]}"
    server.create_bucket(bucket)
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)  # the gateway reads its S3 credentials from its environment
    return Backend(f"s3://{bucket}/graft", server, bucket)


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    return make_backend(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def s3_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    return make_backend("s3", request, tmp_path, monkeypatch)


@pytest.fixture
def world(loop: Loop, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(loop, backend.uri, monkeypatch)
    yield w
    w.close()


# --- the whole file, in chunks --------------------------------------------------------------


def test_a_member_uploads_20_mb_in_chunks(world: World, backend: Backend, data: bytes) -> None:
    created = world.create(data)
    assert created["offset"] == 0
    assert created["complete"] is False
    assert created["id"] == upload_id(sha256(data), SIZE, "train.jsonl")
    assert created["uri"] == f"{backend.uri}/a/datasets/{sha256(data)}/train.jsonl"
    assert backend.stored(created["uri"]) is None
    last = world.send(created["id"], data, 0)
    assert last.status_code == 200, last.text
    assert last.json() | {"offset": SIZE, "complete": True} == last.json()
    stored = backend.stored(created["uri"])
    assert stored is not None
    assert len(stored) == SIZE
    assert sha256(stored) == sha256(data)
    got = world.get("alice", created["id"])
    assert (got.status_code, got.json()["complete"], got.json()["offset"]) == (200, True, SIZE)
    # Nothing is left of the upload but its small description and the file itself.
    leftovers = [p for p in backend.everything() if "uploads/" in p]
    assert leftovers
    assert all(p.endswith(".json") for p in leftovers), leftovers


def test_an_admin_uploads_too(world: World, backend: Backend) -> None:
    small = b'{"messages": []}\n'
    body = {"fileName": "x.jsonl", "size": len(small), "sha256": sha256(small)}
    created = world.post("ada", body).json()
    r = world.put("ada", created["id"], 0, small)
    assert (r.status_code, r.json()["complete"]) == (200, True)
    assert backend.stored(created["uri"]) == small


def test_a_dropped_connection_resumes_where_the_stored_data_ends(
    world: World, backend: Backend, data: bytes
) -> None:
    created = world.create(data)
    up = created["id"]
    first = world.send(up, data, 0, until=CHUNK)
    assert first.json()["offset"] == CHUNK
    cut = 3 * MiB
    _put_and_hang_up(world, up, CHUNK, data[CHUNK : 2 * CHUNK], sent=cut)
    if backend.s3 is None:
        # The bytes that arrived were kept: once the cut request let go of the upload, the
        # offset is just past them.
        assert _offset_reaches(world, up, CHUNK + cut) == CHUNK + cut
    else:
        # S3 keeps whole parts only: the cut part is not there.
        assert world.get("alice", up).json()["offset"] == CHUNK
    offset = world.get("alice", up).json()["offset"]
    last = world.send(up, data, offset)
    assert last.status_code == 200, last.text
    assert last.json()["complete"] is True
    stored = backend.stored(created["uri"])
    assert stored is not None
    assert sha256(stored) == sha256(data)


def _put_and_hang_up(world: World, up: str, offset: int, chunk: bytes, sent: int) -> None:
    """A PUT announcing all of `chunk` that sends `sent` bytes of it, then closes the socket."""
    head = (
        f"PUT /v1/accounts/a/uploads/{up} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {world.keys['alice'].key}\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(chunk)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", world.gw.port), timeout=30) as sock:
        sock.sendall(head + chunk[:sent])


def _offset_reaches(world: World, up: str, expected: int) -> int:
    """The upload's offset once it is `expected`, or the last one seen after a minute: the cut
    request is handled a moment after the socket closed. Waits for a state; the assertion is
    the caller's."""
    offset = -1
    for _ in range(1200):
        offset = world.get("alice", up).json()["offset"]
        if offset == expected:
            break
        time.sleep(0.05)
    return offset


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(
    world: World, backend: Backend, data: bytes
) -> None:
    claimed = sha256(b"something else")
    created = world.create(data, sha=claimed)
    last = world.send(created["id"], data, 0)
    assert last.status_code == 422, last.text
    message = last.json()["error"]["message"]
    assert sha256(data) in message
    assert claimed in message
    assert backend.stored(created["uri"]) is None
    assert backend.everything() == []
    assert world.get("alice", created["id"]).status_code == 404


def test_a_chunk_at_the_wrong_offset_is_a_conflict(world: World, backend: Backend) -> None:
    small = b"0123456789"
    body = {"fileName": "s.txt", "size": 10, "sha256": sha256(small)}
    created = world.post("alice", body).json()
    r = world.put("alice", created["id"], 4, small[4:])
    assert r.status_code == 409
    assert (r.json()["offset"], r.json()["complete"]) == (0, False)
    assert r.json()["error"]["code"] == "upload_offset_mismatch"
    assert world.get("alice", created["id"]).json()["offset"] == 0
    done = world.put("alice", created["id"], 0, small)
    assert (done.status_code, done.json()["complete"]) == (200, True)
    again = world.put("alice", created["id"], 0, small)
    assert (again.status_code, again.json()["offset"], again.json()["complete"]) == (409, 10, True)


def test_bytes_past_the_size_are_refused(world: World, backend: Backend) -> None:
    body = {"fileName": "s.txt", "size": 4, "sha256": sha256(b"abcd")}
    created = world.post("alice", body).json()
    r = world.put("alice", created["id"], 0, b"abcde")
    assert r.status_code == 400
    assert "past the upload's size 4" in r.json()["error"]["message"]
    assert world.get("alice", created["id"]).json()["offset"] == 0


def test_re_posting_a_complete_file_is_complete_at_once(
    world: World, backend: Backend, data: bytes
) -> None:
    small = data[:1000]
    created = world.create(small)
    assert world.put("alice", created["id"], 0, small).json()["complete"] is True
    again = world.create(small)
    assert again == created | {"offset": 1000, "complete": True}


@pytest.mark.parametrize(
    ("user", "account", "status", "code"),
    [
        ("bob", "a", 403, "account_not_permitted"),
        ("victor", "a", 403, "role_not_permitted"),
        ("no-role", "a", 403, "role_not_permitted"),
        (None, "a", 401, "invalid_api_key"),
        ("alice", "b", 403, "account_not_permitted"),
    ],
)
def test_who_may_not_upload(
    world: World, backend: Backend, user: str | None, account: str, status: int, code: str
) -> None:
    small = b"abc"
    body = {"fileName": "s.txt", "size": 3, "sha256": sha256(small)}
    r = world.post(user, body, account=account)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    # Nor can they read or extend someone's upload.
    created = world.post("alice", body).json()
    assert world.get(user, created["id"], account=account).status_code == status
    assert world.put(user, created["id"], 0, small, account=account).status_code == status
    assert world.get("alice", created["id"]).json()["offset"] == 0


def test_a_service_account_token_is_not_an_upload_key(world: World, backend: Backend) -> None:
    world.view.tokens["aaa.bbb.ccc"] = "a"  # the API server would vouch for it
    r = world.http.post(
        "/v1/accounts/a/uploads",
        json={"fileName": "s.txt", "size": 3, "sha256": sha256(b"abc")},
        headers={"Authorization": "Bearer aaa.bbb.ccc"},
    )
    assert r.status_code == 401
    assert "Graft API key" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"fileName": "a/b.jsonl"}, "fileName"),
        ({"fileName": "..\\x"}, "fileName"),
        ({"fileName": ".."}, "fileName"),
        ({"fileName": "bad\x00name"}, "fileName"),
        ({"fileName": ""}, "fileName"),
        ({"fileName": "x" * 256}, "fileName"),
        ({"size": 0}, "size"),
        ({"size": MAX_BYTES + 1}, "size"),
        ({"size": "10"}, "size"),
        ({"sha256": "A" * 64}, "sha256"),
        ({"sha256": "ab"}, "sha256"),
    ],
)
def test_bad_requests_store_nothing(
    world: World, backend: Backend, body: dict[str, Any], param: str
) -> None:
    full = {"fileName": "ok.jsonl", "size": 3, "sha256": sha256(b"abc")} | body
    r = world.post("alice", full)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert backend.everything() == []


def test_unknown_uploads_and_missing_headers(world: World, backend: Backend) -> None:
    for raw in (b"not json", b"[1, 2]"):
        bad = world.http.post("/v1/accounts/a/uploads", content=raw, headers=world.auth("alice"))
        assert bad.status_code == 400, bad.text
    assert world.get("alice", "0" * 32).status_code == 404
    assert world.get("alice", "../../etc").status_code == 404
    created = world.post("alice", {"fileName": "s", "size": 3, "sha256": sha256(b"abc")}).json()
    no_offset = world.http.put(
        f"/v1/accounts/a/uploads/{created['id']}", content=b"abc", headers=world.auth("alice")
    )
    assert no_offset.status_code == 400
    assert "Upload-Offset" in no_offset.json()["error"]["message"]

    def chunked() -> Iterator[bytes]:
        yield b"abc"

    streamed = world.http.put(
        f"/v1/accounts/a/uploads/{created['id']}",
        content=chunked(),
        headers={**world.auth("alice"), "Upload-Offset": "0"},
    )
    assert streamed.status_code == 411


@pytest.mark.s3
def test_s3_chunks_but_the_last_have_5_mib(
    loop: Loop, s3_backend: Backend, monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    w = World(loop, s3_backend.uri, monkeypatch)
    try:
        created = w.create(data)
        r = w.put("alice", created["id"], 0, data[: 4 * MiB])
        assert r.status_code == 400
        assert "5 MiB" in r.json()["error"]["message"]
        assert w.get("alice", created["id"]).json()["offset"] == 0
    finally:
        w.close()


def test_uploads_answer_501_without_a_store(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(loop, None, monkeypatch)
    try:
        r = w.post("alice", {"fileName": "s", "size": 3, "sha256": sha256(b"abc")})
        assert r.status_code == 501
        assert "--uploads" in r.json()["error"]["message"]
        assert w.post(None, {}).status_code == 401  # the key is checked first all the same
    finally:
        w.close()


# --- pure parts -----------------------------------------------------------------------------


def test_the_upload_id_is_the_file() -> None:
    a = upload_id("0" * 64, 10, "x.jsonl")
    assert a == upload_id("0" * 64, 10, "x.jsonl")
    assert len({a, upload_id("1" * 64, 10, "x.jsonl"), upload_id("0" * 64, 11, "x.jsonl")}) == 3
    assert a != upload_id("0" * 64, 10, "y.jsonl")


def test_file_names() -> None:
    assert check_file_name("train data (v2).jsonl") is None
    assert check_file_name("é.jsonl") is None
    for bad in ("", ".", "..", "a/b", "a\\b", "a\nb", "a\x7fb", 3, None, "x" * 256):
        assert check_file_name(bad) is not None, bad
    assert json.dumps(check_file_name("a/b"))


def test_where_the_gateway_stores_uploads() -> None:
    assert uploads_uri("s3://b/p/", {}) == "s3://b/p"
    assert uploads_uri(None, {"GRAFT_UPLOADS_URI": "file:///srv/u"}) == "file:///srv/u"
    assert uploads_uri(None, {"GRAFT_ARTIFACTS_URI": "file:///srv/a/"}) == "file:///srv/a"
    assert uploads_uri(None, {"GRAFT_ARTIFACTS_URI": "pvc://graft-artifacts"}) is None
    assert uploads_uri(None, {}) is None
    assert uploads_uri("pvc://claim/x", {}) is None
    for bad in ("http://x/y", "s3:///nobucket", "file://relative/x", "/srv/u"):
        with pytest.raises(SystemExit, match="expected"):
            uploads_uri(bad, {})
