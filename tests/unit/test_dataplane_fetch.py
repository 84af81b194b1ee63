"""`graft fetch` and `graft dataset validate` against local files and local HTTP/S3 servers."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from graft.api.reports import ValidationResult
from graft.core.s3 import sigv4_authorization
from graft.dataplane import fetch
from graft.dataplane import validate as datasetcli
from graft.dataplane.fetch import S3, FetchError


def chat(n: int) -> bytes:
    line = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    return b"".join(json.dumps(line).encode() + b"\n" for _ in range(n))


# --- A tiny web server: plain files, and S3's GET object and ListObjectsV2 --------------------


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if query.get("list-type") == ["2"]:
                    bucket = url.path.strip("/")
                    prefix = query.get("prefix", [""])[0]
                    keys = sorted(
                        k.split("/", 1)[1]
                        for k in server.files
                        if k.startswith(f"{bucket}/") and k.split("/", 1)[1].startswith(prefix)
                    )
                    body = "".join(
                        f"<Contents><Key>{k}</Key><Size>{len(server.files[bucket + '/' + k])}</Size></Contents>"
                        for k in keys
                    )
                    xml = (
                        '<?xml version="1.0"?><ListBucketResult '
                        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                        f"{body}<IsTruncated>false</IsTruncated></ListBucketResult>"
                    ).encode()
                    self._reply(200, xml)
                    return
                data = server.files.get(url.path.lstrip("/"))
                if data is None:
                    self._reply(
                        404, b"<Error><Message>The specified key does not exist.</Message></Error>"
                    )
                    return
                self._reply(200, data)

            def _reply(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


# --- Local sources ------------------------------------------------------------------------------


def test_fetch_a_file_with_a_name_and_checksum(tmp_path: Path) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(chat(3))
    sha = hashlib.sha256(chat(3)).hexdigest()
    got = fetch.fetch(f"file://{src}", tmp_path / "out", name="data.jsonl", sha256=sha)
    assert (got.files, got.bytes, got.sha256) == (1, len(chat(3)), sha)
    assert (tmp_path / "out" / "data.jsonl").read_bytes() == chat(3)
    with pytest.raises(FetchError, match="the content changed: its sha256 is") as info:
        fetch.fetch(str(src), tmp_path / "out2", sha256="0" * 64)
    assert info.value.permanent
    assert not (tmp_path / "out2" / "src.jsonl").exists()  # nothing half-written left


def test_fetch_a_directory_and_a_claim(tmp_path: Path) -> None:
    model = tmp_path / "claims" / "models" / "tiny"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.bin").write_bytes(b"12345")
    got = fetch.fetch("pvc://models/tiny", tmp_path / "out", root=tmp_path / "claims")
    assert (got.files, got.bytes) == (2, 7)
    assert (tmp_path / "out" / "sub" / "w.bin").read_bytes() == b"12345"
    with pytest.raises(FetchError, match="no such file") as info:
        fetch.fetch("pvc://models/missing.bin", tmp_path / "o", root=tmp_path / "claims")
    assert info.value.permanent


# --- HTTP -------------------------------------------------------------------------------------


def test_fetch_over_http(server: Server, tmp_path: Path) -> None:
    server.files["d/train.jsonl"] = chat(4)
    got = fetch.fetch(f"{server.url}/d/train.jsonl", tmp_path)
    assert got.files == 1
    assert (tmp_path / "train.jsonl").read_bytes() == chat(4)
    with pytest.raises(
        FetchError, match=r"HTTP 404 Not Found \(The specified key does not exist.\)"
    ) as info:
        fetch.fetch(f"{server.url}/d/nope.jsonl", tmp_path)
    assert info.value.permanent
    with pytest.raises(FetchError, match="cannot connect") as info:
        fetch.fetch("http://127.0.0.1:1/x", tmp_path)
    assert not info.value.permanent


def test_fetch_unpacks_a_tar_archive(server: Server, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("config.json", b"{}"), ("weights/a.bin", b"abc")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    server.files["m/model.tar.gz"] = buffer.getvalue()
    got = fetch.fetch(f"{server.url}/m/model.tar.gz", tmp_path / "model")
    assert got.files == 2
    assert (tmp_path / "model" / "weights" / "a.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "weights"]


# --- S3 ---------------------------------------------------------------------------------------


def test_sigv4_matches_the_aws_documentation_example() -> None:
    # "GET Object" example of the Amazon S3 Signature Version 4 documentation.
    empty = hashlib.sha256(b"").hexdigest()
    auth = sigv4_authorization(
        method="GET",
        path="/test.txt",
        query={},
        headers={
            "Host": "examplebucket.s3.amazonaws.com",
            "Range": "bytes=0-9",
            "x-amz-content-sha256": empty,
            "x-amz-date": "20130524T000000Z",
        },
        payload_sha256=empty,
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        amz_date="20130524T000000Z",
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_s3_addressing() -> None:
    aws = S3(
        region="eu-west-1", endpoint=None, access_key=None, secret_key=None, session_token=None
    )
    assert aws.url("bucket", "a b/c.json") == (
        "https://bucket.s3.eu-west-1.amazonaws.com",
        "bucket.s3.eu-west-1.amazonaws.com",
        "/a%20b/c.json",
    )
    assert aws.url("my.bucket", "k")[2] == "/my.bucket/k"
    minio = S3(
        region="us-east-1",
        endpoint="http://minio:9000/",
        access_key=None,
        secret_key=None,
        session_token=None,
    )
    assert minio.url("b", "k") == ("http://minio:9000", "minio:9000", "/b/k")


def test_fetch_from_s3_compatible_storage(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    server.files["models/tiny/config.json"] = b"{}"
    server.files["models/tiny/weights/a.bin"] = b"abcd"
    server.files["models/tinier/x"] = b"not this one"
    got = fetch.fetch("s3://models/tiny", tmp_path / "m")
    assert (got.files, got.bytes) == (2, 6)
    assert (tmp_path / "m" / "weights" / "a.bin").read_bytes() == b"abcd"
    assert not (tmp_path / "m" / "x").exists()
    one = fetch.fetch("s3://models/tiny/config.json", tmp_path / "one", name="c.json")
    assert one.files == 1
    assert (tmp_path / "one" / "c.json").read_bytes() == b"{}"
    auths = [h.get("Authorization", "") for _, h in server.requests]
    assert auths
    assert all(a.startswith("AWS4-HMAC-SHA256 Credential=AKID/") for a in auths)
    with pytest.raises(FetchError, match="no objects under s3://models/nothing/"):
        fetch.fetch("s3://models/nothing/", tmp_path / "none")


# --- The command lines ------------------------------------------------------------------------


def test_fetch_command_writes_its_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "a.jsonl"
    src.write_bytes(chat(3))
    message = tmp_path / "message"
    assert (
        fetch.main([str(src), str(tmp_path / "o"), "--termination-message-path", str(message)]) == 0
    )
    assert json.loads(message.read_text())["files"] == 1
    code = fetch.main(
        [str(tmp_path / "nope"), str(tmp_path / "o"), "--termination-message-path", str(message)]
    )
    assert code == 1
    assert message.read_text() == f"cannot fetch {tmp_path}/nope: no such file"
    assert "error: cannot fetch" in capsys.readouterr().err


def validate(path: Path, *args: str) -> tuple[int, ValidationResult]:
    message = path.parent / "message"
    code = datasetcli.main([str(path), "--termination-message-path", str(message), *args])
    result = ValidationResult.from_message(message.read_text())
    assert result is not None
    return code, result


def test_validate_reports_the_signature(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat(3))
    code, result = validate(data, "--format", "chat")
    assert code == 0
    assert result == ValidationResult(
        status="valid",
        sha256=hashlib.sha256(chat(3)).hexdigest(),
        size_bytes=len(chat(3)),
        example_count=3,
        filename="train.jsonl",
        format="chat",
    )
    code, result = validate(data, "--filename", "mine.jsonl")
    assert (code, result.filename) == (0, "mine.jsonl")


def test_validate_limits_and_format(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(chat(2))
    code, result = validate(data)
    assert (code, result.status) == (1, "invalid")
    assert result.errors == ("too few examples: 2; at least 3 are needed",)
    data.write_bytes(chat(5))
    code, result = validate(data, "--max-examples", "4")
    assert result.errors == ("too many examples: 5; the limit is 4",)
    code, result = validate(data, "--format", "completion")
    assert result.errors == (
        "line 1: the first valid example is in chat format, but the Dataset says format: completion",
    )
    code, result = validate(data, "--max-bytes", "100")
    assert code == 1
    assert result.errors[0].startswith("the data is larger than the limit of 100 bytes")
    assert result.sha256 is None
    data.write_bytes(chat(2) + b"{oops\n" * 30)
    code, result = validate(data, "--max-examples", "1")
    assert (code, result.error_count, len(result.errors)) == (1, 31, 20)
    assert result.errors[:2] == (
        "too many examples: 2; the limit is 1",  # the file as a whole comes first
        "line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
    )


def test_validate_over_http_stops_at_the_size_limit(server: Server, tmp_path: Path) -> None:
    server.files["big.jsonl"] = chat(100)
    # The server announces its length: refused before reading.
    code, result = validate_url(f"{server.url}/big.jsonl", tmp_path, "--max-bytes", "1000")
    assert (code, result.status, result.size_bytes) == (1, "invalid", len(chat(100)))
    code, result = validate_url(f"{server.url}/big.jsonl", tmp_path)
    assert (code, result.example_count) == (0, 100)
    code, result = validate_url(f"{server.url}/missing.jsonl", tmp_path)
    assert (code, result.status) == (1, "error")
    assert "HTTP 404" in result.message


def validate_url(url: str, tmp_path: Path, *args: str) -> tuple[int, ValidationResult]:
    message = tmp_path / "message"
    code = datasetcli.main([url, "--termination-message-path", str(message), *args])
    result = ValidationResult.from_message(message.read_text())
    assert result is not None
    return code, result


def test_validate_counts_bytes_when_the_size_is_unknown() -> None:
    lines = list(datasetcli._lines(io.BytesIO(chat(10)), 10_000))
    assert len(lines) == 10
    with pytest.raises(datasetcli.TooLarge):
        list(datasetcli._lines(io.BytesIO(chat(10)), len(chat(10)) - 1))
