"""The SDK's upload client against a real aiohttp server on loopback that speaks the gateway's
upload protocol (minimally: in memory, one account, one key), including a 409 that moves the
client to the server's offset, a dropped connection mid-chunk, a sha256 mismatch and a refused
key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from graft.sdk.errors import Unauthorized, UploadError
from graft.sdk.upload import Uploader
from harness.replicas import Loop

KEY = "graft_test_secret"
ACCOUNT = "acme"


@dataclass
class Upload:
    id: str
    file_name: str
    size: int
    sha256: str
    data: bytearray = field(default_factory=bytearray)
    complete: bool = False

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fileName": self.file_name,
            "size": self.size,
            "sha256": self.sha256,
            "offset": len(self.data),
            "complete": self.complete,
            "uri": f"file:///store/{ACCOUNT}/datasets/{self.sha256}/{self.file_name}"
            if self.complete
            else None,
        }


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}},
        status=status,
    )


@dataclass
class UploadServer:
    """The protocol in memory. `drop_puts`: PUT numbers (1-based) after which the server keeps
    half the chunk and drops the connection without answering; `skew_puts`: PUT numbers that are
    answered 409 after the server stores the chunk itself (as if a previous attempt had)."""

    uploads: dict[str, Upload] = field(default_factory=dict)
    drop_puts: set[int] = field(default_factory=set)
    skew_puts: set[int] = field(default_factory=set)
    corrupt: bool = False
    puts: int = 0
    gets: int = 0
    offsets: list[int] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        app = web.Application()
        base = "/v1/accounts/{account}/uploads"
        app.router.add_post(base, self._start)
        app.router.add_get(base + "/{id}", self._get)
        app.router.add_put(base + "/{id}", self._put)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return _error(401, "invalid API key", "invalid_api_key")
        if request.match_info["account"] != ACCOUNT:
            return _error(403, "the key is not of this account", "forbidden")
        return None

    async def _start(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = await request.json()
        upload_id = hashlib.sha256(f"{body['fileName']}\0{body['sha256']}".encode()).hexdigest()[
            :16
        ]
        upload = self.uploads.setdefault(
            upload_id, Upload(upload_id, body["fileName"], int(body["size"]), body["sha256"])
        )
        return web.json_response(upload.wire())

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        self.gets += 1
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return _error(404, "no such upload", "not_found")
        return web.json_response(upload.wire())

    async def _put(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._refused(request)) is not None:
            return refused
        upload = self.uploads.get(request.match_info["id"])
        if upload is None:
            return _error(404, "no such upload", "not_found")
        self.puts += 1
        offset = int(request.headers["Upload-Offset"])
        self.offsets.append(offset)
        chunk = await request.read()
        if offset != len(upload.data):
            return web.json_response(upload.wire(), status=409)
        if self.puts in self.drop_puts:
            upload.data += chunk[: len(chunk) // 2]
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        upload.data += chunk
        if self.puts in self.skew_puts:
            return web.json_response(upload.wire(), status=409)
        if len(upload.data) >= upload.size:
            digest = hashlib.sha256(upload.data).hexdigest()
            if self.corrupt or digest != upload.sha256:
                upload.data.clear()
                return _error(422, f"sha256 of the data is {digest}", "sha256_mismatch")
            upload.complete = True
        return web.json_response(upload.wire())


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def server(loop: Loop) -> Iterator[UploadServer]:
    server = UploadServer()
    loop.run(server.start())
    yield server
    loop.run(server.stop())


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.jsonl"
    path.write_bytes(os.urandom(10_000))
    return path


def uploader(server: UploadServer, *, key: str = KEY, account: str = ACCOUNT) -> Uploader:
    sleeps: list[float] = []
    up = Uploader(server.url, key, account, chunk_size=3000, timeout=10, sleep=sleeps.append)
    return up


def stored(server: UploadServer) -> bytes:
    [upload] = server.uploads.values()
    return bytes(upload.data)


def test_uploads_in_chunks_and_names_the_uri(server: UploadServer, data_file: Path) -> None:
    seen: list[int] = []
    with uploader(server) as up:
        state = up.upload(data_file, on_progress=lambda done, total: seen.append(done))
    assert state.complete
    assert state.uri
    assert state.uri.endswith("/big.jsonl")
    assert stored(server) == data_file.read_bytes()
    assert server.offsets == [0, 3000, 6000, 9000]
    assert seen == [3000, 6000, 9000, 10_000]


def test_the_same_file_again_is_complete_at_once(server: UploadServer, data_file: Path) -> None:
    with uploader(server) as up:
        first = up.upload(data_file)
        puts = server.puts
        again = up.upload(data_file)
    assert again.id == first.id
    assert again.complete
    assert server.puts == puts  # nothing sent twice


def test_a_409_resumes_from_the_servers_offset(server: UploadServer, data_file: Path) -> None:
    server.skew_puts = {2}  # the 2nd chunk is stored but answered 409 (with offset 6000)
    with uploader(server) as up:
        state = up.upload(data_file)
    assert state.complete
    assert stored(server) == data_file.read_bytes()
    assert server.offsets == [0, 3000, 6000, 9000]


def test_a_dropped_connection_resumes_after_asking_the_offset(
    server: UploadServer, data_file: Path
) -> None:
    server.drop_puts = {2}  # half of the 2nd chunk arrives, then the connection drops
    with uploader(server) as up:
        state = up.upload(data_file)
    assert state.complete
    assert stored(server) == data_file.read_bytes()
    assert server.gets >= 1
    assert server.offsets == [0, 3000, 4500, 7500]


def test_a_connection_that_keeps_dropping_gives_up_with_what_to_do(
    server: UploadServer, data_file: Path
) -> None:
    server.drop_puts = set(range(1, 100))
    with uploader(server) as up, pytest.raises(UploadError) as caught:
        up.upload(data_file)
    assert "run again" in str(caught.value)


def test_a_sha256_mismatch_is_an_upload_error(server: UploadServer, data_file: Path) -> None:
    server.corrupt = True
    with uploader(server) as up, pytest.raises(UploadError) as caught:
        up.upload(data_file)
    assert "sha256" in str(caught.value)


def test_a_wrong_key_is_refused_with_what_to_do(server: UploadServer, data_file: Path) -> None:
    with uploader(server, key="graft_wrong") as up, pytest.raises(Unauthorized) as caught:
        up.upload(data_file)
    assert "GRAFT_API_KEY" in str(caught.value)
    assert server.uploads == {}


def test_an_unreachable_gateway_says_so(tmp_path: Path, data_file: Path) -> None:
    up = Uploader("http://127.0.0.1:1", KEY, ACCOUNT, retries=1, sleep=lambda s: None)
    with up, pytest.raises(UploadError) as caught:
        up.upload(data_file)
    assert "GRAFT_GATEWAY_URL" in str(caught.value)


def test_a_dataset_too_large_for_a_config_map_is_uploaded_and_named_by_its_uri(
    server: UploadServer,
) -> None:
    from graft.sdk import Connection, Dataset
    from graft.sdk.dataset import CONFIG_MAP_LIMIT

    line = {"prompt": "x" * 1000, "completion": "y"}
    examples = [line] * (CONFIG_MAP_LIMIT // 1000 + 10)
    conn = Connection("acme", gateway_url=server.url, api_key=KEY)
    dataset = Dataset.from_list(examples, filename="big.jsonl", connection=conn)
    assert dataset.size > CONFIG_MAP_LIMIT
    uri = dataset._upload()
    assert uri == f"file:///store/{ACCOUNT}/datasets/{dataset.sha256}/big.jsonl"
    assert stored(server) == dataset.content()
