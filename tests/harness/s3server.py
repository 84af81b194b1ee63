"""A real S3-compatible server for tests: SeaweedFS's `weed server` (master, volume, filer and
S3 gateway in one process) in a temporary directory on loopback ports, with one access key.

The binary is built by hack/build-control-plane.sh into ~/.cache/graft/bin (SEAWEEDFS_VERSION in
hack/versions.env); `.ci/run` runs that script first. A missing binary fails the tests that need
it, with that instruction: they never skip.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from graft.core.s3 import S3

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "GRAFTTESTACCESSKEY"
SECRET_KEY = "graft-test-secret-key"
REGION = "us-east-1"
READY_TIMEOUT = 90.0


def weed_binary() -> Path:
    """The cached `weed` of SEAWEEDFS_VERSION; AssertionError saying how to build it."""
    versions = dict(
        line.split("=", 1)
        for line in (REPO / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    version = versions["SEAWEEDFS_VERSION"]
    cache = Path(
        os.environ.get("GRAFT_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graft"
    )
    binary = cache / "bin" / f"weed-{version}"
    assert os.access(binary, os.X_OK), (
        f"SeaweedFS {version} is not built ({binary} is missing): run hack/build-control-plane.sh "
        "(the S3 upload tests need a real S3-compatible server)"
    )
    return binary


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free right now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str  # http://127.0.0.1:<port>
    workdir: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment a client of this server reads (graft.core.s3.S3.from_env)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def client(self) -> S3:
        return S3.from_env(self.env)

    def call(
        self, method: str, bucket: str, key: str = "", query: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One signed request without a body: (status, body)."""
        url, headers = self.client().signed(method, bucket, key, query=query)
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_bucket(self, bucket: str) -> None:
        status, body = self.call("PUT", bucket)
        assert status == 200, f"cannot create bucket {bucket}: HTTP {status} {body[:300]!r}"

    def get(self, bucket: str, key: str) -> bytes | None:
        status, body = self.call("GET", bucket, key)
        if status == 404:
            return None
        assert status == 200, f"GET s3://{bucket}/{key}: HTTP {status} {body[:300]!r}"
        return body

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        status, body = self.call("GET", bucket, "", {"list-type": "2", "prefix": prefix})
        assert status == 200, f"list s3://{bucket}/{prefix}: HTTP {status} {body[:300]!r}"
        text = body.decode()
        return [part.split("</Key>", 1)[0] for part in text.split("<Key>")[1:]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(workdir: Path) -> S3Server:
    """Start `weed server` with an S3 gateway in `workdir` and wait until S3 answers signed
    requests. Ports are picked free; a start that loses a port race is tried again."""
    binary = weed_binary()
    last = ""
    for attempt in range(3):
        run = workdir / f"run{attempt}"
        data = run / "data"
        data.mkdir(parents=True)
        config = run / "s3.json"
        identity = {
            "name": "graft-tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        log = run / "weed.log"
        args = [
            str(binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={run / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            f"-s3.localSocket={run / 's3.sock'}",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=run, start_new_session=True
            )
        server = S3Server(process, f"http://127.0.0.1:{s3}", run, log)
        if _wait_ready(server):
            return server
        server.stop()
        last = log.read_text(errors="replace")[-3000:]
    raise AssertionError(f"SeaweedFS did not start an S3 server; its log ends:\n{last}")


def _wait_ready(server: S3Server) -> bool:
    """Until a signed request about a bucket that does not exist answers 404 NoSuchBucket: the
    S3 gateway is up, has its identities (403 before) and reaches the filer."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            status, _ = server.call("GET", "graft-readiness-probe", "", {"list-type": "2"})
        except (urllib.error.URLError, OSError):
            status = 0
        if status == 404:
            return True
        time.sleep(0.3)
    return False


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session; each test makes a bucket of its own."""
    server = start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
