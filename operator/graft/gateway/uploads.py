"""Dataset uploads through the gateway: files too large for a ConfigMap, uploaded in chunks by
a user with an API key of their account (role admin or member), resumable after a dropped
connection, checked against their sha256 at the end (docs/gateway.md, "Uploading datasets").

    POST /v1/accounts/{account}/uploads        {"fileName", "size", "sha256"} -> the upload
    GET  /v1/accounts/{account}/uploads/{id}   -> the upload (offset: bytes stored so far)
    PUT  /v1/accounts/{account}/uploads/{id}   Upload-Offset: <n>, the next bytes -> the upload

An upload's ID is a hash of (sha256, size, fileName), so POSTing the same file again finds the
same upload and resumes it, on any gateway replica: all state is in the store
(graft.gateway.stores). Everything a request says is checked before a byte is stored. The server
(graft.gateway.server) authenticates and authorizes; this module speaks the protocol.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from graft.gateway import errors
from graft.gateway.stores import OffsetConflict, Store, StoreError, Upload

log = logging.getLogger(__name__)

MAX_CHUNK = 64 * 1024 * 1024
"""Largest body of one PUT."""
READ_CHUNK = 1024 * 1024
SHA256_RE = re.compile(r"[0-9a-f]{64}")
ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_FILE_NAME = 255
OFFSET_HEADER = "Upload-Offset"


def upload_id(sha256: str, size: int, file_name: str) -> str:
    """The same file (content, size, name) is always the same upload."""
    return hashlib.sha256(f"{sha256}\n{size}\n{file_name}".encode()).hexdigest()[:32]


def check_file_name(name: Any) -> str | None:
    """Why `name` cannot be an uploaded file's name, or None. It becomes one path segment of the
    file's URI, so no separators, no control characters and no dot names."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_FILE_NAME:
        return f"fileName must be a string of 1 to {MAX_FILE_NAME} characters"
    if name in (".", ".."):
        return "fileName cannot be '.' or '..'"
    if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "fileName cannot contain '/', '\\', NUL or control characters"
    return None


def _json(
    store: Store, account: str, upload: Upload, offset: int, complete: bool
) -> dict[str, Any]:
    return {
        "id": upload.id,
        "fileName": upload.file_name,
        "size": upload.size,
        "sha256": upload.sha256,
        "offset": offset,
        "complete": complete,
        "uri": store.uri(account, upload),
    }


def _error(error: errors.ApiError, extra: dict[str, Any] | None = None) -> web.Response:
    return web.json_response(
        {**(extra or {}), **error.body()}, status=error.status, headers=error.headers()
    )


def _store_failed(exc: StoreError) -> web.Response:
    log.warning("upload store failed: %s", exc)
    return _error(
        errors.ApiError(
            503,
            f"The upload store failed: {exc}. Please try again in 5s (GET the upload for its "
            "offset first).",
            errors.SERVICE_UNAVAILABLE,
            code="upload_store_unavailable",
            retry_after=5,
        )
    )


def _not_found(upload: str) -> web.Response:
    return _error(
        errors.ApiError(
            404,
            f"No upload {upload!r} in this account: POST /v1/accounts/<account>/uploads creates "
            "one (a wrong sha256 at the end discards it).",
            errors.INVALID_REQUEST,
            code="upload_not_found",
        )
    )


class BodyCut(Exception):
    """The client stopped sending before the chunk's Content-Length."""


class Uploads:
    """The three routes, on one store, for callers the server has already authorized."""

    def __init__(self, store: Store, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes

    async def create(self, request: web.Request, account: str) -> web.Response:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _error(
                errors.bad_request("The request body is too large for an upload's description.")
            )
        except ValueError as exc:
            return _error(errors.bad_request(f"The request body is not valid JSON: {exc}."))
        if not isinstance(body, dict):
            return _error(errors.bad_request("The request body must be a JSON object."))
        name, size, sha256 = body.get("fileName"), body.get("size"), body.get("sha256")
        problem = check_file_name(name)
        if problem is not None:
            return _error(errors.bad_request(f"{problem}.", param="fileName"))
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            return _error(
                errors.bad_request(
                    "size must be a whole number of bytes, at least 1.", param="size"
                )
            )
        if size > self.max_bytes:
            return _error(
                errors.bad_request(
                    f"size {size} is larger than the {self.max_bytes} bytes a dataset may have "
                    "here (the gateway's --max-upload-bytes).",
                    param="size",
                )
            )
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            return _error(
                errors.bad_request(
                    "sha256 must be 64 lowercase hexadecimal digits.", param="sha256"
                )
            )
        assert isinstance(name, str)
        upload = Upload(upload_id(sha256, size, name), name, size, sha256)
        try:
            await self.store.save(account, upload)
            if await self.store.exists(account, upload):
                return web.json_response(_json(self.store, account, upload, size, True))
            offset = await self.store.offset(account, upload)
        except StoreError as exc:
            return _store_failed(exc)
        return web.json_response(_json(self.store, account, upload, offset, False))

    async def status(self, request: web.Request, account: str) -> web.Response:
        found = await self._find(request, account)
        if isinstance(found, web.Response):
            return found
        try:
            if await self.store.exists(account, found):
                return web.json_response(_json(self.store, account, found, found.size, True))
            offset = await self.store.offset(account, found)
        except StoreError as exc:
            return _store_failed(exc)
        return web.json_response(_json(self.store, account, found, offset, False))

    async def _find(self, request: web.Request, account: str) -> Upload | web.Response:
        wanted = request.match_info["upload"]
        if not ID_RE.fullmatch(wanted):
            return _not_found(wanted)
        try:
            found = await self.store.load(account, wanted)
        except StoreError as exc:
            return _store_failed(exc)
        return found if found is not None else _not_found(wanted)

    async def put(self, request: web.Request, account: str) -> web.Response:
        length = request.content_length
        if length is None:
            return _error(
                errors.ApiError(
                    411,
                    "A chunk needs a Content-Length header (no chunked transfer encoding).",
                    errors.INVALID_REQUEST,
                    code="length_required",
                )
            )
        if length > MAX_CHUNK:
            return _error(
                errors.ApiError(
                    413,
                    f"A chunk is at most {MAX_CHUNK} bytes; this one has {length}: send the file "
                    "in smaller chunks.",
                    errors.INVALID_REQUEST,
                    code="chunk_too_large",
                )
            )
        raw_offset = request.headers.get(OFFSET_HEADER, "")
        if not raw_offset.isdigit():
            return _error(
                errors.bad_request(
                    f"A chunk needs an {OFFSET_HEADER} header: the byte offset it starts at "
                    "(GET the upload for its current offset)."
                )
            )
        offset = int(raw_offset)
        found = await self._find(request, account)
        if isinstance(found, web.Response):
            return found
        upload = found
        if offset + length > upload.size:
            return _error(
                errors.bad_request(
                    f"The chunk ends at byte {offset + length}, past the upload's size "
                    f"{upload.size}."
                )
            )
        last = offset + length == upload.size
        minimum = self.store.min_chunk
        if not last and length < minimum:
            return _error(
                errors.bad_request(
                    f"Every chunk but the last must have at least {minimum} bytes (5 MiB: this "
                    f"store is S3, whose multipart parts have that minimum); this one has "
                    f"{length}."
                )
            )
        try:
            if await self.store.exists(account, upload):
                if offset == upload.size and length == 0:
                    return web.json_response(_json(self.store, account, upload, upload.size, True))
                return self._conflict(account, upload, upload.size, True)
            try:
                stored = await self.store.append(
                    account, upload, offset, length, _body(request, length)
                )
            except OffsetConflict as conflict:
                return self._conflict(account, upload, conflict.offset, False, conflict.busy)
            except BodyCut as exc:
                log.info("upload %s of %s: %s", upload.id, account, exc)
                return _error(errors.bad_request(f"The chunk was cut short: {exc}."))
            if stored < upload.size:
                return web.json_response(_json(self.store, account, upload, stored, False))
            try:
                actual = await self.store.finish(account, upload)
            except OffsetConflict as conflict:
                return self._conflict(account, upload, conflict.offset, False, conflict.busy)
        except StoreError as exc:
            return _store_failed(exc)
        if actual is not None:
            log.info("upload %s of %s: sha256 mismatch, discarded", upload.id, account)
            return _error(
                errors.ApiError(
                    422,
                    f"The uploaded data's sha256 is {actual}, not the {upload.sha256} the upload "
                    "was created with; the upload was discarded. POST the upload again and send "
                    "the file from the start.",
                    errors.INVALID_REQUEST,
                    code="sha256_mismatch",
                    param="sha256",
                )
            )
        log.info(
            "upload %s of %s complete: %s", upload.id, account, self.store.uri(account, upload)
        )
        return web.json_response(_json(self.store, account, upload, upload.size, True))

    def _conflict(
        self, account: str, upload: Upload, offset: int, complete: bool, busy: bool = False
    ) -> web.Response:
        why = (
            "another request is writing this upload right now"
            if busy
            else f"the stored data ends at byte {offset}"
        )
        error = errors.ApiError(
            409,
            f"The chunk does not start where the upload continues: {why}. Send the chunk that "
            f"starts at the offset in this answer.",
            errors.INVALID_REQUEST,
            code="upload_offset_mismatch",
        )
        return _error(error, _json(self.store, account, upload, offset, complete))


async def _body(request: web.Request, length: int) -> AsyncIterator[bytes]:
    """The request's body as it arrives, never more than READ_CHUNK at a time in memory. A body
    that ends before Content-Length (the client went away) raises, so the store keeps only what
    arrived and the request ends."""
    received = 0
    while received < length:
        chunk = await request.content.read(min(READ_CHUNK, length - received))
        if not chunk:
            raise BodyCut(f"the client sent {received} of {length} bytes and stopped")
        received += len(chunk)
        yield chunk
