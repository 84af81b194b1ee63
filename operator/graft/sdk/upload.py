"""The client of the gateway's resumable upload (a Dataset too large for a ConfigMap).

The protocol (the gateway implements it; docs/gateway.md):

- `POST /v1/accounts/{account}/uploads` {"fileName", "size", "sha256"} starts an upload, or finds
  the one of the same file (resume): the answer is the upload's state {"id", "fileName", "size",
  "sha256", "offset", "complete", "uri"}; complete at once when the store already holds the file.
- `GET .../uploads/{id}` is the state (offset = bytes stored).
- `PUT .../uploads/{id}` with `Upload-Offset: n` and the next chunk as body appends it; 409 carries
  the state with the server's offset (the client resumes from it); 422 is a sha256 mismatch at
  the end. Errors are OpenAI-shaped {"error": {"message", "type", "code"}}.

Chunks of 8 MiB are streamed from the file. A dropped connection is retried a few times with
backoff: the client asks for the state and continues from the server's offset. Every request has
a timeout; the API key goes in `Authorization: Bearer`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from graft.sdk.errors import UploadError, gateway_error

CHUNK = 8 * 1024 * 1024
BLOCK = 256 * 1024
RETRIES = 5


@dataclass(frozen=True)
class UploadState:
    id: str
    file_name: str
    size: int
    sha256: str
    offset: int
    complete: bool
    uri: str | None

    @classmethod
    def from_wire(cls, body: Any) -> UploadState:
        if not isinstance(body, dict):
            raise UploadError(f"the gateway answered the upload with {str(body)[:200]!r}")
        try:
            return cls(
                id=str(body["id"]),
                file_name=str(body.get("fileName") or ""),
                size=int(body.get("size") or 0),
                sha256=str(body.get("sha256") or ""),
                offset=int(body.get("offset") or 0),
                complete=bool(body.get("complete")),
                uri=str(body["uri"]) if body.get("uri") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UploadError(
                f"the gateway's upload state lacks {exc}: {str(body)[:200]!r}"
            ) from None


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _chunk(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """The bytes [offset, offset+length) of the file, a block at a time."""
    with path.open("rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            block = f.read(min(BLOCK, left))
            if not block:
                return
            left -= len(block)
            yield block


class Uploader:
    """Uploads one file to the gateway's upload endpoint of `account`."""

    def __init__(
        self,
        gateway_url: str,
        api_key: str,
        account: str,
        *,
        timeout: float = 60.0,
        chunk_size: int = CHUNK,
        retries: int = RETRIES,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = f"{gateway_url.rstrip('/')}/v1/accounts/{account}/uploads"
        self.chunk_size = chunk_size
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.client = httpx.Client(
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _state(self, response: httpx.Response, action: str) -> UploadState:
        if response.status_code >= 400:
            raise gateway_error(response.status_code, response.content, action=action)
        try:
            return UploadState.from_wire(response.json())
        except ValueError:
            raise UploadError(
                f"the gateway's answer to {action} is not JSON: {response.text[:200]!r}"
            ) from None

    def start(self, file_name: str, size: int, sha256: str) -> UploadState:
        response = self._retrying(
            "start the upload",
            lambda: self.client.post(
                self.base, json={"fileName": file_name, "size": size, "sha256": sha256}
            ),
        )
        return self._state(response, "start the upload")

    def status(self, upload_id: str) -> UploadState:
        response = self._retrying(
            "read the upload's state", lambda: self.client.get(f"{self.base}/{upload_id}")
        )
        return self._state(response, "read the upload's state")

    def _retrying(self, action: str, request: Callable[[], httpx.Response]) -> httpx.Response:
        """A request that is retried on a transport error (no answer), with backoff."""
        for attempt in range(self.retries + 1):
            try:
                return request()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise UploadError(
                        f"cannot reach the gateway to {action} after {attempt + 1} attempts: "
                        f"{exc}; check GRAFT_GATEWAY_URL and run again (the upload resumes)"
                    ) from None
                self.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def upload(
        self,
        path: Path,
        *,
        file_name: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> UploadState:
        """Upload the file (resuming what the gateway already holds); the final state carries
        the artifact's `uri`."""
        sha256, size = file_digest(path)
        state = self.start(file_name or path.name, size, sha256)
        failures = 0
        while not state.complete:
            if state.offset >= size:
                # Every byte is stored but the upload is not complete: ask again once, then
                # tell the user rather than loop.
                state = self.status(state.id)
                if not state.complete:
                    raise UploadError(
                        f"the gateway holds all {size} bytes of upload {state.id} but does not "
                        "call it complete; run again to resume"
                    )
                break
            length = min(self.chunk_size, size - state.offset)
            try:
                response = self.client.put(
                    f"{self.base}/{state.id}",
                    headers={
                        "Upload-Offset": str(state.offset),
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(length),
                    },
                    content=_chunk(path, state.offset, length),
                )
            except httpx.TransportError:
                failures += 1
                if failures > self.retries:
                    raise UploadError(
                        f"the connection to the gateway dropped {failures} times while "
                        f"uploading {path.name}; run again: the upload resumes at byte "
                        f"{state.offset}"
                    ) from None
                self.sleep(self.backoff * 2 ** (failures - 1))
                state = self.status(state.id)
                continue
            if response.status_code == 409:
                state = self._conflict_state(response, state)
                continue
            if response.status_code == 422:
                raise gateway_error(
                    422,
                    response.content,
                    action=f"finish the upload of {path.name} (its sha256 did not match: did "
                    "the file change while it was uploaded?)",
                )
            state = self._state(response, f"upload {path.name}")
            failures = 0
            if on_progress is not None:
                on_progress(state.offset, size)
        return state

    def _conflict_state(self, response: httpx.Response, state: UploadState) -> UploadState:
        """The server's state carried by a 409 (offset mismatch), else asked for."""
        try:
            return UploadState.from_wire(response.json())
        except (ValueError, UploadError):
            return self.status(state.id)
