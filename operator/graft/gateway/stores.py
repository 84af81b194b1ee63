"""Where dataset uploads are kept while they arrive and once they are complete: a directory
(file:///root, for local clusters and tests) or an S3-compatible bucket (s3://bucket/prefix).

Every bit of an upload's state is in the store, none in the gateway process, so that any replica
of the gateway can take the next chunk of an upload another one started, and a restarted gateway
resumes where the last one stopped:

- the upload's description (file name, size, sha256) in a small JSON object next to the data,
  written when the upload is created;
- the bytes so far: a `.part` file appended to (directory), or the parts of an S3 multipart
  upload (the offset is the sum of the uploaded parts' sizes, from ListParts);
- the complete file at `<root>/<account>/datasets/<sha256>/<fileName>`, only after its sha256
  was checked, so that what is there is always what its name says.

A dropped connection keeps what had arrived: the bytes written to the `.part` file, or the S3
parts that were complete (S3 drops a part whose body was cut short).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape

import aiohttp

from graft.core import s3 as core_s3

UPLOADS_DIR = ".uploads"
"""Folder of unfinished uploads, under <root>/<account>/datasets/ (a name no sha256 can take)."""
S3_UPLOADS_DIR = ".graft-uploads"
"""The same in a bucket: SeaweedFS keeps its own multipart uploads in folders named `.uploads`
and hides every such folder from listings, so Graft's must be named otherwise there."""
HASH_CHUNK = 1 << 20
S3_MIN_PART = 5 * 1024 * 1024
"""S3 refuses parts smaller than 5 MiB but for the last one."""
S3_CALL_TIMEOUT = 30.0
"""Total deadline of an S3 request that moves no file data (list, create, complete, delete)."""
S3_DATA_TIMEOUT = 900.0
"""Total deadline of an S3 request that moves a chunk or a whole file (part upload, the read
back for the sha256, the server-side copy)."""
MAX_S3_ANSWER = 1024 * 1024
"""Largest XML answer read from S3 (listings of one upload's parts are far smaller)."""


@dataclass(frozen=True)
class Upload:
    """What an upload is for: its ID (from the other three) and the file it will be."""

    id: str
    file_name: str
    size: int
    sha256: str

    def to_json(self) -> bytes:
        body = {"id": self.id, "fileName": self.file_name, "size": self.size, "sha256": self.sha256}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Upload:
        data = json.loads(raw)
        return cls(str(data["id"]), str(data["fileName"]), int(data["size"]), str(data["sha256"]))


class StoreError(Exception):
    """The store failed (I/O error, S3 refused or did not answer); a retry may work."""


class OffsetConflict(Exception):
    """The chunk does not start where the stored data ends (or another PUT is writing)."""

    def __init__(self, offset: int, busy: bool = False) -> None:
        super().__init__(f"stored offset {offset}")
        self.offset = offset
        self.busy = busy


class Store(Protocol):
    """One place uploads go. `account` is a checked account name (a DNS label)."""

    root: str
    min_chunk: int
    """Smallest chunk accepted but for the last one (0: any)."""

    def uri(self, account: str, upload: Upload) -> str:
        """Where the complete file is: what a Dataset's spec.source.uri names."""
        ...

    async def exists(self, account: str, upload: Upload) -> bool:
        """Whether the complete file is in place."""
        ...

    async def save(self, account: str, upload: Upload) -> None:
        """Record the upload's description (idempotent)."""
        ...

    async def load(self, account: str, upload_id: str) -> Upload | None: ...

    async def offset(self, account: str, upload: Upload) -> int:
        """Bytes stored so far."""
        ...

    async def append(
        self, account: str, upload: Upload, offset: int, length: int, body: AsyncIterator[bytes]
    ) -> int:
        """Store `length` bytes from `body` at `offset` (OffsetConflict when the stored data
        does not end there); the new offset. When `body` fails midway, what arrived is kept as
        far as the store can (module docstring) and the exception propagates."""
        ...

    async def finish(self, account: str, upload: Upload) -> str | None:
        """All bytes are stored: check the sha256 and move the file into place (None), or
        discard the upload and its description and return the sha256 the data had."""
        ...


_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="graft-uploads")
"""Blocking file work (fsync, hashing a whole file, renames) runs here, off the event loop."""


async def _blocking(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)


def open_store(uri: str, env: Mapping[str, str], session: aiohttp.ClientSession) -> Store:
    """The Store for a file:// or s3:// URI; ValueError for anything else."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError(f"{uri}: expected file:///<absolute path>")
        return DirectoryStore(Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme == "s3":
        bucket, prefix = core_s3.split_uri(uri)
        return S3Store(core_s3.S3.from_env(env), bucket, prefix.strip("/"), session)
    raise ValueError(f"{uri}: uploads go to a file:// directory or an s3:// bucket")


# --- a directory ---------------------------------------------------------------------------


class DirectoryStore:
    """Uploads in a directory: `.uploads/<id>.part` appended to under an exclusive flock (a
    second PUT of the same upload at the same time gets 409 instead of interleaving), renamed
    into place once its sha256 is right. The directory may be shared by gateways on one host or
    on a file system with working locks."""

    min_chunk = 0

    def __init__(self, root: Path) -> None:
        self.path = root
        self.root = root.as_uri()

    def _datasets(self, account: str) -> Path:
        return self.path / account / "datasets"

    def _final(self, account: str, upload: Upload) -> Path:
        return self._datasets(account) / upload.sha256 / upload.file_name

    def _staged(self, account: str, upload_id: str, suffix: str) -> Path:
        return self._datasets(account) / UPLOADS_DIR / f"{upload_id}{suffix}"

    def uri(self, account: str, upload: Upload) -> str:
        return self._final(account, upload).as_uri()

    async def exists(self, account: str, upload: Upload) -> bool:
        return self._final(account, upload).is_file()

    async def save(self, account: str, upload: Upload) -> None:
        await _blocking(self._save, account, upload)

    def _save(self, account: str, upload: Upload) -> None:
        meta = self._staged(account, upload.id, ".json")
        try:
            meta.parent.mkdir(parents=True, exist_ok=True)
            tmp = meta.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_bytes(upload.to_json())
            os.replace(tmp, meta)
        except OSError as exc:
            raise StoreError(f"cannot record the upload: {exc}") from exc

    async def load(self, account: str, upload_id: str) -> Upload | None:
        try:
            return Upload.from_json(self._staged(account, upload_id, ".json").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"cannot read upload {upload_id}: {exc}") from exc

    async def offset(self, account: str, upload: Upload) -> int:
        if self._final(account, upload).is_file():
            return upload.size
        try:
            return self._staged(account, upload.id, ".part").stat().st_size
        except FileNotFoundError:
            return 0

    async def append(
        self, account: str, upload: Upload, offset: int, length: int, body: AsyncIterator[bytes]
    ) -> int:
        part = self._staged(account, upload.id, ".part")
        fd = self._open_locked(part)
        if fd is None:
            raise OffsetConflict(await self.offset(account, upload), busy=True)
        try:
            current = os.fstat(fd).st_size
            if current != offset:
                raise OffsetConflict(current)
            written = 0
            # Writes go to the page cache and take microseconds, so they stay on the loop; a
            # cut connection leaves exactly the bytes that arrived, in order, in the file.
            async for chunk in body:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(chunk)
            await _blocking(os.fsync, fd)
            return current + written
        except OSError as exc:
            raise StoreError(f"cannot write the upload: {exc}") from exc
        finally:
            os.close(fd)  # also releases the lock

    def _open_locked(self, part: Path) -> int | None:
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            raise StoreError(f"cannot open the upload: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise StoreError(f"cannot lock the upload: {exc}") from exc
        return fd

    async def finish(self, account: str, upload: Upload) -> str | None:
        part = self._staged(account, upload.id, ".part")
        fd = self._open_locked(part)
        if fd is None:
            raise OffsetConflict(await self.offset(account, upload), busy=True)
        try:
            return await _blocking(self._finish, account, upload, part)  # type: ignore[no-any-return]
        except OSError as exc:
            raise StoreError(f"cannot complete the upload: {exc}") from exc
        finally:
            os.close(fd)

    def _finish(self, account: str, upload: Upload, part: Path) -> str | None:
        final = self._final(account, upload)
        if final.is_file() and not part.exists():
            return None  # another request completed it a moment ago
        digest = hashlib.sha256()
        with part.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        actual = digest.hexdigest()
        if actual != upload.sha256:
            part.unlink(missing_ok=True)
            self._staged(account, upload.id, ".json").unlink(missing_ok=True)
            return actual
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)  # atomic: the final name never holds a partial file
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return None


# --- an S3-compatible bucket ---------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    number: int
    size: int
    etag: str


class S3Store:
    """Uploads in an S3 bucket through multipart uploads, found again by listing (no state in
    the gateway): the multipart upload of `.uploads/<id>` holds the chunks, one part each;
    CompleteMultipartUpload makes it the object `.uploads/<id>`, which is read back for its
    sha256 and copied to the final key (then deleted), so the final key only ever holds checked
    data. Two PUTs of one upload at the same time are not kept apart here (the later part of a
    number wins): clients send one chunk at a time. (The folder is S3_UPLOADS_DIR here.)"""

    min_chunk = S3_MIN_PART

    def __init__(
        self, s3: core_s3.S3, bucket: str, prefix: str, session: aiohttp.ClientSession
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.session = session
        self.root = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")

    def _key(self, account: str, rest: str) -> str:
        return "/".join(p for p in (self.prefix, account, "datasets", rest) if p)

    def _final(self, account: str, upload: Upload) -> str:
        return self._key(account, f"{upload.sha256}/{upload.file_name}")

    def _staged(self, account: str, upload_id: str, suffix: str = "") -> str:
        return self._key(account, f"{S3_UPLOADS_DIR}/{upload_id}{suffix}")

    def uri(self, account: str, upload: Upload) -> str:
        key = core_s3.quote(self._final(account, upload), safe="-_.~/")
        return f"s3://{self.bucket}/{key}"

    # --- requests --------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, bytes]:
        """One S3 request without file data: (status, body up to MAX_S3_ANSWER); StoreError
        for a status not in `ok`."""
        payload = data or b""
        url, signed = self.s3.signed(
            method,
            self.bucket,
            key,
            query=query,
            headers=headers,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )
        try:
            async with asyncio.timeout(S3_CALL_TIMEOUT):
                async with self.session.request(
                    method, url, headers=signed, data=payload, allow_redirects=False
                ) as resp:
                    body = await resp.content.read(MAX_S3_ANSWER)
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"S3 {method} s3://{self.bucket}/{key}: {exc!r}") from exc
        if status not in ok:
            raise StoreError(f"S3 {method} s3://{self.bucket}/{key}: HTTP {status}{_detail(body)}")
        return status, body

    async def exists(self, account: str, upload: Upload) -> bool:
        return await self._head(self._final(account, upload)) is not None

    async def _head(self, key: str) -> int | None:
        url, signed = self.s3.signed("HEAD", self.bucket, key)
        try:
            async with asyncio.timeout(S3_CALL_TIMEOUT):
                async with self.session.head(url, headers=signed, allow_redirects=False) as resp:
                    if resp.status == 404:
                        return None
                    if resp.status != 200:
                        raise StoreError(f"S3 HEAD s3://{self.bucket}/{key}: HTTP {resp.status}")
                    return int(resp.headers.get("Content-Length", "0"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"S3 HEAD s3://{self.bucket}/{key}: {exc!r}") from exc

    async def save(self, account: str, upload: Upload) -> None:
        await self._call(
            "PUT",
            self._staged(account, upload.id, ".json"),
            data=upload.to_json(),
            headers={"content-type": "application/json"},
        )

    async def load(self, account: str, upload_id: str) -> Upload | None:
        status, body = await self._call(
            "GET", self._staged(account, upload_id, ".json"), ok=(200, 404)
        )
        if status == 404:
            return None
        try:
            return Upload.from_json(body)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable description of upload {upload_id}: {exc}") from exc

    async def _multipart(self, key: str) -> str | None:
        """The UploadId of the multipart upload in progress for `key`, the oldest if several."""
        _, body = await self._call("GET", "", query={"uploads": "", "prefix": key})
        root = _xml(body)
        ns = _ns(root)
        for item in root.iter(f"{ns}Upload"):
            if item.findtext(f"{ns}Key") == key:
                return item.findtext(f"{ns}UploadId") or None
        return None

    async def _parts(self, key: str, upload_id: str) -> list[_Part]:
        parts: list[_Part] = []
        marker = "0"
        while True:
            _, body = await self._call(
                "GET", key, query={"uploadId": upload_id, "part-number-marker": marker}
            )
            root = _xml(body)
            ns = _ns(root)
            for item in root.iter(f"{ns}Part"):
                parts.append(
                    _Part(
                        int(item.findtext(f"{ns}PartNumber") or 0),
                        int(item.findtext(f"{ns}Size") or 0),
                        item.findtext(f"{ns}ETag") or "",
                    )
                )
            if (root.findtext(f"{ns}IsTruncated") or "").lower() != "true":
                break
            marker = root.findtext(f"{ns}NextPartNumberMarker") or ""
            if not marker:
                break
        parts.sort(key=lambda p: p.number)
        # Only parts 1..n without a gap count: each chunk is the next part number.
        return [p for i, p in enumerate(parts, start=1) if p.number == i]

    async def _state(self, account: str, upload: Upload) -> tuple[str | None, list[_Part], int]:
        """(multipart UploadId, its parts, offset)."""
        key = self._staged(account, upload.id)
        upload_id = await self._multipart(key)
        if upload_id is None:
            # Completed but not yet checked and moved (a gateway stopped in between)?
            size = await self._head(key)
            return None, [], size or 0
        parts = await self._parts(key, upload_id)
        return upload_id, parts, sum(p.size for p in parts)

    async def offset(self, account: str, upload: Upload) -> int:
        if await self.exists(account, upload):
            return upload.size
        return (await self._state(account, upload))[2]

    async def append(
        self, account: str, upload: Upload, offset: int, length: int, body: AsyncIterator[bytes]
    ) -> int:
        key = self._staged(account, upload.id)
        upload_id, parts, current = await self._state(account, upload)
        if current != offset:
            raise OffsetConflict(current)
        if length == 0:
            return current
        if upload_id is None and current > 0:
            raise OffsetConflict(current)  # all parts are in and completed: nothing may follow
        if upload_id is None:
            _, answer = await self._call("POST", key, query={"uploads": ""})
            upload_id = _xml(answer).findtext(f"{_ns(_xml(answer))}UploadId")
            if not upload_id:
                raise StoreError(f"S3 CreateMultipartUpload of {key} answered no UploadId")
        query = {"partNumber": str(len(parts) + 1), "uploadId": upload_id}
        url, signed = self.s3.signed(
            "PUT", self.bucket, key, query=query, payload_sha256=core_s3.UNSIGNED_PAYLOAD
        )
        signed["content-length"] = str(length)
        sent = 0
        failure: BaseException | None = None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal sent, failure
            try:
                async for chunk in body:
                    sent += len(chunk)
                    yield chunk
            except BaseException as exc:
                failure = exc  # aiohttp wraps it; the caller wants the client's own failure
                raise

        try:
            async with asyncio.timeout(S3_DATA_TIMEOUT):
                async with self.session.put(
                    url, headers=signed, data=counted(), allow_redirects=False
                ) as resp:
                    answer = await resp.content.read(MAX_S3_ANSWER)
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if failure is not None:
                raise failure from exc
            raise StoreError(f"S3 UploadPart of {key}: {exc!r}") from exc
        if status != 200:
            raise StoreError(f"S3 UploadPart of {key}: HTTP {status}{_detail(answer)}")
        if sent != length:
            raise StoreError(f"S3 UploadPart of {key}: sent {sent} bytes, expected {length}")
        return current + length

    async def finish(self, account: str, upload: Upload) -> str | None:
        key = self._staged(account, upload.id)
        final = self._final(account, upload)
        upload_id, parts, current = await self._state(account, upload)
        if upload_id is not None:
            listing = "".join(
                f"<Part><PartNumber>{p.number}</PartNumber><ETag>{escape(p.etag)}</ETag></Part>"
                for p in parts
            )
            xml = f"<CompleteMultipartUpload>{listing}</CompleteMultipartUpload>".encode()
            _, answer = await self._call("POST", key, query={"uploadId": upload_id}, data=xml)
            if b"<Error>" in answer:  # S3 may fail a completion inside a 200 answer
                raise StoreError(f"S3 CompleteMultipartUpload of {key}:{_detail(answer)}")
        elif current == 0 and await self.exists(account, upload):
            return None  # another request completed it a moment ago
        actual = await self._sha256(key)
        if actual != upload.sha256:
            await self._call("DELETE", key, ok=(200, 204, 404))
            await self._call(
                "DELETE", self._staged(account, upload.id, ".json"), ok=(200, 204, 404)
            )
            return actual
        source = "/" + core_s3.quote(f"{self.bucket}/{key}", safe="-_.~/")
        url, signed = self.s3.signed(
            "PUT", self.bucket, final, headers={"x-amz-copy-source": source}
        )
        try:
            async with asyncio.timeout(S3_DATA_TIMEOUT):
                async with self.session.put(url, headers=signed, allow_redirects=False) as resp:
                    answer = await resp.content.read(MAX_S3_ANSWER)
                    status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"S3 CopyObject to {final}: {exc!r}") from exc
        if status != 200 or b"<Error>" in answer:
            raise StoreError(f"S3 CopyObject to {final}: HTTP {status}{_detail(answer)}")
        await self._call("DELETE", key, ok=(200, 204, 404))
        return None

    async def _sha256(self, key: str) -> str:
        url, signed = self.s3.signed("GET", self.bucket, key)
        digest = hashlib.sha256()
        try:
            async with asyncio.timeout(S3_DATA_TIMEOUT):
                async with self.session.get(url, headers=signed, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise StoreError(f"S3 GET s3://{self.bucket}/{key}: HTTP {resp.status}")
                    async for chunk in resp.content.iter_chunked(HASH_CHUNK):
                        digest.update(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise StoreError(f"S3 GET s3://{self.bucket}/{key}: {exc!r}") from exc
        return digest.hexdigest()


def _xml(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise StoreError(f"unreadable S3 answer: {exc}") from exc


def _ns(root: ET.Element) -> str:
    return root.tag.split("}", 1)[0] + "}" if root.tag.startswith("{") else ""


def _detail(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    if "<Message>" in text:
        text = text.split("<Message>", 1)[1].split("</Message>", 1)[0]
    text = " ".join(text.split())
    return f" ({text[:300]})" if text else ""
