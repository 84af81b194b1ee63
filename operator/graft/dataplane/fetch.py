"""`graft fetch SRC DEST_DIR`: copy an artifact named by URI into a local directory.

The init containers of Graft's trainer Jobs run it to bring the base model and the dataset into
the pod; `graft dataset validate` reads its input through `open_source()` below. Sources:

- a path, or file:///path: a file is copied to DEST_DIR/<its name>, a directory's contents into
  DEST_DIR (file:// is for local clusters and tests, where the path exists where the pod runs);
- pvc://<claim>/<path>: the claim must be mounted at $GRAFT_PVC_ROOT/<claim> (default
  /mnt/pvc, which is where Graft's Jobs mount claims); it is then read like a path;
- http(s)://...: one file, saved as DEST_DIR/<last path segment>; a .tar, .tar.gz or .tgz
  archive is unpacked into DEST_DIR instead (the way to serve a model directory over HTTP);
- s3://<bucket>/<key>: one object, or every object under the prefix <key>/ (a model
  directory). Requests are signed (AWS Signature V4) with AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN from the environment, or sent unsigned
  when there are none (public buckets); AWS_REGION (default us-east-1) and AWS_ENDPOINT_URL_S3 or
  AWS_ENDPOINT_URL (MinIO, Ceph, R2, ...; path-style addressing) choose where. Instance
  profiles and web-identity (IRSA) credentials are not read: put keys in the environment;
- hf://<org>/<name>: a Hugging Face Hub repository, with the huggingface_hub package (in
  Graft's image, which has the train extras); HF_TOKEN from the environment for private ones.

Exit codes (a Job's podFailurePolicy can act on them): 0 fetched; 1 will not work on retry (not
found, HTTP 4xx, checksum mismatch, unsupported source); 2 invalid command line; 3 may work on
retry (network error, HTTP 5xx, timeout). The outcome is printed and written as the container's
termination message: a JSON summary on success, the reason on failure.

Standard library only (no kopf, no kubernetes, no boto3).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

from graft.core import s3 as core_s3
from graft.core.s3 import split_uri
from graft.core.settings import PVC_ROOT_ENV
from graft.dataplane import termination

EXIT_OK = 0
EXIT_PERMANENT = 1
EXIT_USAGE = 2
EXIT_TRANSIENT = 3

DEFAULT_PVC_ROOT = "/mnt/pvc"
TIMEOUT_SECONDS = 60.0
CHUNK = 1 << 20
USER_AGENT = "graft-fetch/0.1"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class FetchError(Exception):
    """The artifact cannot be fetched; `str()` says why, `permanent` whether a retry could help."""

    def __init__(self, message: str, *, permanent: bool, http_status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.http_status = http_status


def pvc_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def local_path(src: str, *, root: Path | None = None) -> Path | None:
    """The local path a path, file:// or pvc:// source is read from; None for remote sources."""
    parsed = urllib.parse.urlparse(src)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise FetchError(f"{src}: a file:// URI cannot name a host", permanent=True)
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "pvc":
        if not parsed.netloc:
            raise FetchError(f"{src}: expected pvc://<claim>/<path>", permanent=True)
        base = (root or pvc_root()) / parsed.netloc
        return base / urllib.parse.unquote(parsed.path).lstrip("/")
    if parsed.scheme and len(parsed.scheme) > 1:
        return None
    return Path(src)


# --- Reading one object as a stream (also used by `graft dataset validate`) -------------------


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self, size: int = -1, /) -> bytes: ...


@dataclass
class Source:
    """An open single-object source: its stream, its size when known up front, its name."""

    stream: Readable
    size: int | None
    name: str


@contextlib.contextmanager
def open_source(src: str, *, root: Path | None = None) -> Iterator[Source]:
    """Open one file or object for reading, whatever its scheme (not hf://, not directories)."""
    path = local_path(src, root=root)
    if path is not None:
        if path.is_dir():
            raise FetchError(f"{src} is a directory; expected one file", permanent=True)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise FetchError(f"{src}: no such file", permanent=True) from None
        except OSError as exc:
            raise FetchError(f"{src}: cannot read: {exc.strerror or exc}", permanent=True) from exc
        with f:
            yield Source(stream=f, size=os.fstat(f.fileno()).st_size, name=path.name)
        return
    scheme = urllib.parse.urlparse(src).scheme
    if scheme in ("http", "https"):
        request = urllib.request.Request(src, headers={"User-Agent": USER_AGENT})
    elif scheme == "s3":
        bucket, key = _s3_split(src)
        if not key or key.endswith("/"):
            raise FetchError(f"{src} names a prefix; expected one object", permanent=True)
        request = S3.from_env(os.environ).request(bucket, key)
    elif scheme == "hf":
        raise FetchError(
            f"{src} names a whole Hugging Face repository; expected one file (use https:// with "
            "the file's resolve URL)",
            permanent=True,
        )
    else:
        raise FetchError(f"{src}: unsupported scheme {scheme}://", permanent=True)
    with _urlopen(request, src) as response:
        length = response.headers.get("Content-Length")
        name = _last_segment(src) or "download"
        yield Source(stream=response, size=int(length) if length else None, name=name)


@contextlib.contextmanager
def _urlopen(request: urllib.request.Request, what: str) -> Iterator[http.client.HTTPResponse]:
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        detail = _http_error_detail(exc)
        raise FetchError(
            f"{what}: HTTP {exc.code} {exc.reason}{detail}",
            permanent=400 <= exc.code < 500,
            http_status=exc.code,
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{what}: cannot connect: {reason}", permanent=False) from None
    with response:
        yield response


def _http_error_detail(exc: urllib.error.HTTPError) -> str:
    """S3 and most servers explain a refusal in the body; keep a short piece of it."""
    try:
        body = exc.read(2048).decode("utf-8", "replace")
    except OSError:
        return ""
    if "<Message>" in body:
        body = body.split("<Message>", 1)[1].split("</Message>", 1)[0]
    body = " ".join(body.split())
    return f" ({body[:300]})" if body else ""


def _last_segment(uri: str) -> str:
    path = urllib.parse.urlparse(uri).path
    return urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])


# --- Fetching into a directory --------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    files: int
    bytes: int
    sha256: str | None  # of a single file fetched as a file

    def summary(self, src: str, dest: Path) -> str:
        out: dict[str, object] = {
            "status": "fetched",
            "source": src,
            "destination": str(dest),
            "files": self.files,
            "bytes": self.bytes,
        }
        if self.sha256:
            out["sha256"] = self.sha256
        return json.dumps(out, separators=(",", ":"), sort_keys=True)


def fetch(
    src: str,
    dest: Path,
    *,
    name: str | None = None,
    sha256: str | None = None,
    root: Path | None = None,
) -> Fetched:
    """Copy `src` into directory `dest` (created if needed). `name` renames a single file;
    `sha256` is checked against a single file and a mismatch is a permanent error."""
    dest.mkdir(parents=True, exist_ok=True)
    path = local_path(src, root=root)
    if path is not None and path.is_dir():
        if name or sha256:
            raise FetchError(
                f"{src} is a directory: --name and --sha256 need a file", permanent=True
            )
        return _copy_tree(path, dest)
    scheme = urllib.parse.urlparse(src).scheme
    if scheme == "hf":
        if name or sha256:
            raise FetchError(
                "hf:// fetches a repository: --name and --sha256 need a file", permanent=True
            )
        return _fetch_hf(src, dest)
    if scheme == "s3":
        bucket, key = _s3_split(src)
        if not key or key.endswith("/"):
            return _fetch_s3_prefix(src, bucket, key, dest)
        try:
            return _fetch_one(src, dest, name, sha256, root)
        except FetchError as exc:
            # s3://bucket/dir names the objects under dir/ when there is no object "dir".
            if exc.http_status != 404 or name or sha256:
                raise
            return _fetch_s3_prefix(src, bucket, key, dest)
    return _fetch_one(src, dest, name, sha256, root)


def _fetch_one(
    src: str, dest: Path, name: str | None, sha256: str | None, root: Path | None
) -> Fetched:
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise FetchError(f"--name {name!r} must be a plain file name", permanent=True)
    scheme = urllib.parse.urlparse(src).scheme
    with open_source(src, root=root) as source:
        if scheme in ("http", "https", "s3") and not name and src.endswith(ARCHIVE_SUFFIXES):
            return _unpack(source, src, dest)
        return _save(source, src, dest / (name or source.name), sha256)


def _save(source: Source, src: str, target: Path, sha256: str | None) -> Fetched:
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := _read(source.stream, src):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if source.size is not None and size != source.size:
            raise FetchError(
                f"{src}: got {size} bytes, expected {source.size} (connection cut?)",
                permanent=False,
            )
        actual = digest.hexdigest()
        if sha256 and actual != sha256.lower():
            raise FetchError(
                f"{src}: the content changed: its sha256 is {actual}, expected {sha256.lower()} "
                "(the data differs from what was validated; Datasets are immutable: create a "
                "new Dataset for new data)",
                permanent=True,
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return Fetched(files=1, bytes=size, sha256=actual)


def _read(stream: Readable, src: str) -> bytes:
    try:
        return stream.read(CHUNK)
    except (OSError, TimeoutError) as exc:
        raise FetchError(f"{src}: read failed: {exc}", permanent=False) from None


def _unpack(source: Source, src: str, dest: Path) -> Fetched:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = _save(source, src, Path(tmp) / "archive", None)
        try:
            with tarfile.open(Path(tmp) / "archive") as tar:
                # The "data" filter refuses absolute paths, links out of dest and devices.
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"{src}: not a readable tar archive: {exc}", permanent=True) from None
    files = sum(1 for p in dest.rglob("*") if p.is_file())
    return Fetched(files=files, bytes=archive.bytes, sha256=None)


def _copy_tree(path: Path, dest: Path) -> Fetched:
    files = size = 0
    for item in sorted(path.rglob("*")):
        target = dest / item.relative_to(path)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, target)
            files += 1
            size += item.stat().st_size
    return Fetched(files=files, bytes=size, sha256=None)


def _fetch_hf(src: str, dest: Path) -> Fetched:
    parsed = urllib.parse.urlparse(src)
    repo = (parsed.netloc + parsed.path).strip("/")
    if repo.count("/") != 1:
        raise FetchError(f"{src}: expected hf://<org>/<name>", permanent=True)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FetchError(
            f"{src}: hf:// needs the huggingface_hub package, which this image lacks (install "
            "graft-operator[train])",
            permanent=True,
        ) from None
    try:
        snapshot_download(repo_id=repo, local_dir=str(dest))
    except Exception as exc:  # the hub client raises many types; all end up here
        status = getattr(getattr(exc, "response", None), "status_code", None)
        permanent = isinstance(status, int) and 400 <= status < 500
        raise FetchError(f"{src}: {type(exc).__name__}: {exc}", permanent=permanent) from None
    files = [p for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return Fetched(files=len(files), bytes=sum(p.stat().st_size for p in files), sha256=None)


# --- S3 (AWS Signature Version 4: graft.core.s3, shared with the gateway's uploads) -----------


def _s3_split(src: str) -> tuple[str, str]:
    try:
        return split_uri(src)
    except ValueError as exc:
        raise FetchError(str(exc), permanent=True) from None


@dataclass(frozen=True)
class S3(core_s3.S3):
    """graft.core.s3.S3 with the urllib requests `graft fetch` makes."""

    def request(
        self, bucket: str, key: str, query: Mapping[str, str] | None = None
    ) -> urllib.request.Request:
        url, headers = self.signed("GET", bucket, key, query=query)
        headers["User-Agent"] = USER_AGENT
        return urllib.request.Request(url, headers=headers)

    def list_keys(self, bucket: str, prefix: str, what: str) -> list[tuple[str, int]]:
        """Every (key, size) under `prefix` (ListObjectsV2, following continuation tokens)."""
        keys: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            with _urlopen(self.request(bucket, "", query), what) as response:
                body = response.read()
            try:
                root = ET.fromstring(body)
            except ET.ParseError as exc:
                raise FetchError(f"{what}: unreadable listing: {exc}", permanent=False) from None
            ns = root.tag.split("}", 1)[0] + "}" if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                keys.append((item.findtext(f"{ns}Key") or "", int(item.findtext(f"{ns}Size") or 0)))
            if (root.findtext(f"{ns}IsTruncated") or "").lower() != "true":
                return keys
            token = root.findtext(f"{ns}NextContinuationToken")
            if not token:
                return keys


def _fetch_s3_prefix(src: str, bucket: str, key: str, dest: Path) -> Fetched:
    s3 = S3.from_env(os.environ)
    prefix = key if not key or key.endswith("/") else key + "/"
    objects = [(k, s) for k, s in s3.list_keys(bucket, prefix, src) if not k.endswith("/")]
    if not objects:
        raise FetchError(f"{src}: no objects under s3://{bucket}/{prefix}", permanent=True)
    total = 0
    for object_key, _ in objects:
        relative = object_key[len(prefix) :]
        target = (dest / relative).resolve()
        if not target.is_relative_to(dest.resolve()):
            raise FetchError(
                f"{src}: object key {object_key!r} escapes the destination", permanent=True
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with _urlopen(s3.request(bucket, object_key), f"s3://{bucket}/{object_key}") as response:
            length = response.headers.get("Content-Length")
            source = Source(response, int(length) if length else None, target.name)
            total += _save(source, f"s3://{bucket}/{object_key}", target, None).bytes
    return Fetched(files=len(objects), bytes=total, sha256=None)


# --- The command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        termination.write(termination.message_path(), f"graft fetch: {message}")
        self.exit(EXIT_USAGE, f"graft fetch: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SRC", help="path, file://, pvc://, http(s)://, s3:// or hf:// URI"
    )
    parser.add_argument("dest", metavar="DEST_DIR", help="directory to copy into (created)")
    parser.add_argument("--name", help="file name for a single-file source (default: its own)")
    parser.add_argument("--sha256", help="expected SHA-256 of a single-file source (hex)")
    parser.add_argument(
        "--termination-message-path",
        default=None,
        help=f"where to write the outcome (default: ${termination.ENV}, or "
        f"{termination.DEFAULT_PATH} when it exists)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `fetch` to the `graft` command line."""
    parser = sub.add_parser(
        "fetch",
        help="copy an artifact (model, dataset) from a URI into a directory",
        description=(__doc__ or "").split("\n\n", 1)[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    path = termination.message_path(ns.termination_message_path)
    dest = Path(ns.dest)
    try:
        fetched = fetch(ns.source, dest, name=ns.name, sha256=ns.sha256)
    except FetchError as exc:
        message = f"cannot fetch {exc}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        termination.write(path, message)
        return EXIT_PERMANENT if exc.permanent else EXIT_TRANSIENT
    except OSError as exc:
        message = f"cannot fetch {ns.source} into {dest}: {exc}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        termination.write(path, message)
        return EXIT_TRANSIENT
    summary = fetched.summary(ns.source, dest)
    print(summary, flush=True)
    termination.write(path, summary)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="graft fetch", description=(__doc__ or "").split("\n\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
