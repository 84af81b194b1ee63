"""The local node's pure parts and its bookkeeping, without an API server: which pods it takes,
how mount paths map to local directories, how a container's environment is resolved, where
logs go, and that processes of deleted pods are ended. (What it does with a real cluster is
tested by the integration tests, which run every Job and model-server pod through it.)"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.localnode import paths
from graft.localnode.jobs import (
    RUN_DURATION_ANNOTATION,
    KubeletStandIn,
    PodSetupError,
    fallback_message,
    rewrite,
    takes_job_pod,
)
from graft.localnode.main import logs, running_pid, runtime_images
from graft.localnode.servers import (
    ServerPodError,
    probe,
    readiness_patch,
    readiness_target,
    server_argv,
    takes_server_pod,
)

IMAGE = "ghcr.io/graft-dev/graft:1.0"


def job_pod(**changes: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {
            "name": "train-abc",
            "namespace": "team",
            "uid": "u1",
            "annotations": {RUN_DURATION_ANNOTATION: "1h"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train"}],
        },
        "spec": {"containers": [{"name": "main", "image": IMAGE, "command": ["graft"]}]},
        "status": {"phase": "Running"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if value is None:
            pod[section].pop(field, None)
        else:
            pod[section][field] = value
    return pod


def server_pod(image: str = IMAGE, ip: str | None = "127.64.0.7") -> dict[str, Any]:
    return {
        "metadata": {"name": "chat-0", "namespace": "team", "uid": "s1"},
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "image": image,
                    "command": ["graft"],
                    "args": ["serve", "--host", "0.0.0.0", "--port", "8000"],
                }
            ]
        },
        "status": {"phase": "Running", "podIP": ip},
    }


# --- which pods -------------------------------------------------------------------------------


def test_takes_running_annotated_job_pods() -> None:
    assert takes_job_pod(job_pod())


@pytest.mark.parametrize(
    "changes",
    [
        {"metadata__annotations": None},
        {"metadata__ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet"}]},
        {"metadata__deletionTimestamp": "2026-11-28T00:00:00Z"},
        {"status__phase": "Pending"},
    ],
)
def test_leaves_other_pods_to_kwok(changes: dict[str, Any]) -> None:
    assert not takes_job_pod(job_pod(**changes))


def test_server_pods_only_of_the_runtime_image_when_images_are_given() -> None:
    assert takes_server_pod(server_pod(), frozenset({IMAGE}))
    assert not takes_server_pod(server_pod("vllm/vllm-openai:v0.11.0"), frozenset({IMAGE}))
    assert takes_server_pod(server_pod("vllm/vllm-openai:v0.11.0"), None)  # the tests' mode
    assert not takes_server_pod(server_pod(ip=None), None)


def test_runtime_images_follow_the_operators_setting() -> None:
    assert runtime_images(None, {"GRAFT_REFERENCE_IMAGE": "r/x:1"}) == {"r/x:1"}
    assert runtime_images(["o/y:2"], {}) >= {"o/y:2"}
    assert len(runtime_images(None, {})) == 1


def test_server_argv_binds_the_pod_ip() -> None:
    argv = server_argv(server_pod())
    assert argv[:3] == [sys.executable, "-m", "graft.cli"]
    assert argv[argv.index("--host") + 1] == "127.64.0.7"
    bad = server_pod()
    bad["spec"]["containers"][0]["command"] = ["vllm"]
    with pytest.raises(ServerPodError, match="does not run graft"):
        server_argv(bad)


# --- paths ------------------------------------------------------------------------------------


def test_rewrite_maps_mount_paths_where_a_path_starts() -> None:
    mapping = {"/data": "/tmp/x/data", "/data/sets": "/tmp/y", "/models/": "/tmp/m"}
    assert rewrite("/data/a.jsonl", mapping) == "/tmp/x/data/a.jsonl"
    assert rewrite("/data/sets/b", mapping) == "/tmp/y/b"  # the longest mount wins
    assert rewrite("--out=/models", mapping) == "--out=/tmp/m"
    assert rewrite("file:///data/c", mapping) == "file:///tmp/x/data/c"
    assert rewrite("/database", mapping) == "/database"  # not a mount: a prefix of a name
    assert rewrite("x/data/z", mapping) == "x/data/z"  # not at the start of a path


def test_documented_log_and_pid_places() -> None:
    assert paths.root({"GRAFT_CACHE_DIR": "/c"}) == Path("/c/localnode")
    assert paths.root({"XDG_CACHE_HOME": "/x"}) == Path("/x/graft/localnode")
    base = Path("/c/localnode")
    assert paths.container_log(base, "ns", "p", "main") == base / "logs/ns/p/main.log"
    assert paths.pid_file(base) == base / "localnode.pid"


def test_logs_prints_a_pods_containers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = paths.container_log(tmp_path, "ns", "pod-1", "main")
    log.parent.mkdir(parents=True)
    log.write_text("hello from main\n")
    assert logs("pod-1", "ns", None, tmp_path) == 0
    assert "hello from main" in capsys.readouterr().out
    assert logs("pod-1", "ns", "other", tmp_path) == 1
    assert "no logs for pod pod-1" in capsys.readouterr().err


def test_running_pid(tmp_path: Path) -> None:
    pid_file = tmp_path / "localnode.pid"
    assert running_pid(pid_file) is None
    pid_file.write_text(f"{os.getpid()}\n")
    assert running_pid(pid_file) == os.getpid()
    pid_file.write_text("not a pid")
    assert running_pid(pid_file) is None


def test_fallback_message_is_the_logs_tail(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(200)))
    tail = fallback_message(log)
    assert tail.endswith("line 199\n")
    assert "line 119\n" not in tail


# --- volumes and env, on a stand-in that makes no request ---------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> KubeletStandIn:
    """A Job-pod kubelet whose API server does not exist: the parts below make no request."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return KubeletStandIn(str(kubeconfig), "team", tmp_path / "work", logs=tmp_path / "logs")


def test_volumes_are_directories(node: KubeletStandIn, tmp_path: Path) -> None:
    pod = job_pod()
    pod["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
    ]
    volumes = node._volumes(pod, tmp_path / "pod")
    assert volumes["scratch"] == tmp_path / "pod" / "volumes" / "scratch"
    assert volumes["data"] == node.claim_dir("shared") == tmp_path / "work" / "claims" / "shared"
    assert all(path.is_dir() for path in volumes.values())
    container = {"volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "sets"}]}
    mapping = node._mapping(container, volumes)
    assert mapping == {"/data": str(volumes["data"] / "sets")}
    pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    with pytest.raises(PodSetupError, match="cannot provide hostPath"):
        node._volumes(pod, tmp_path / "pod")


def test_env_values_and_the_pods_fields(
    node: KubeletStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/src")
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ]
    }
    env = node._env(job_pod(), container, tmp_path / "home")
    assert env["A"] == "1"
    assert env["POD"] == "train-abc"
    assert env["NS"] == "team"
    assert env["HOME"] == str(tmp_path / "home")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONPATH"] == "/src"  # the pods run the code under test
    assert env["PATH"].startswith(str(Path(sys.executable).parent))
    bad = {"env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}
    with pytest.raises(PodSetupError, match=r"spec\.nodeName"):
        node._env(job_pod(), bad, tmp_path / "home")


def test_the_process_of_a_deleted_pod_is_ended(node: KubeletStandIn) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        node._taken.add("u1")
        node._pod_procs["u1"] = proc
        node._reap_deleted([])  # u1 no longer listed: deleted
        assert proc.wait(timeout=30) != 0
        assert "u1" in node._deleted
    finally:
        if proc.poll() is None:
            proc.kill()


# --- `hack/localcluster down` stops the local node through its pid file ------------------------


def _localcluster_cluster() -> Any:
    """hack/localcluster's cluster module (standard library only; hack/ is not a package)."""
    import importlib

    hack = str(Path(__file__).resolve().parents[2] / "hack")
    if hack not in sys.path:
        sys.path.insert(0, hack)
    return importlib.import_module("localcluster.cluster")


def _started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """`proc` once it runs its own program (between fork and exec it is still this pytest)."""
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while b"time.sleep(600)" not in cmdline.read_bytes():
        assert proc.poll() is None
        time.sleep(0.01)
    return proc


@pytest.fixture
def node_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local node's state directory under a GRAFT_CACHE_DIR of this test's own."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    base = paths.root({"GRAFT_CACHE_DIR": str(tmp_path)})
    base.mkdir(parents=True)
    return base


def test_cluster_down_stops_the_local_node_of_its_pid_file(node_base: Path) -> None:
    cluster, base = _localcluster_cluster(), node_base
    # A process whose command line names the local node, as `graft localnode` does.
    node = _started(
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "localnode"])
    )
    try:
        paths.pid_file(base).write_text(f"{node.pid}\n")
        cluster.stop_local_node()
        assert node.wait(timeout=60) != 0  # ended by SIGTERM
        assert not paths.pid_file(base).exists()
    finally:
        if node.poll() is None:
            node.kill()


def test_cluster_down_leaves_a_stale_pids_new_owner_alone(node_base: Path) -> None:
    cluster, base = _localcluster_cluster(), node_base
    other = _started(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
    try:
        paths.pid_file(base).write_text(f"{other.pid}\n")  # the pid now belongs to another program
        cluster.stop_local_node()
        assert other.poll() is None
        assert not paths.pid_file(base).exists()
    finally:
        other.kill()
        other.wait()


# --- readiness ---------------------------------------------------------------------------------


def probed_pod(port: object = "http", path: str | None = "/health") -> dict[str, Any]:
    pod = server_pod()
    container = pod["spec"]["containers"][0]
    container["ports"] = [
        {"name": "metrics", "containerPort": 9000},
        {"name": "http", "containerPort": 8000},
    ]
    container["readinessProbe"] = {"httpGet": {"port": port} | ({"path": path} if path else {})}
    return pod


def test_the_readiness_probe_is_the_containers_own() -> None:
    assert readiness_target(probed_pod()) == ("127.64.0.7", 8000, "/health")
    assert readiness_target(probed_pod(8123, None)) == ("127.64.0.7", 8123, "/")
    assert readiness_target(probed_pod("8124")) == ("127.64.0.7", 8124, "/health")
    assert readiness_target(server_pod()) is None  # no probe: ready once started
    with pytest.raises(ServerPodError, match="'grpc' is not one of the container's ports"):
        readiness_target(probed_pod("grpc"))


class Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = int(self.path.strip("/"))
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/500")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def answers() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_probe_succeeds_on_2xx_and_3xx_as_the_kubelets(answers: int) -> None:
    assert probe(("127.0.0.1", answers, "/200"))
    assert probe(("127.0.0.1", answers, "/302"))  # not followed (it would lead to a 500)
    assert not probe(("127.0.0.1", answers, "/503"))
    assert not probe(("127.0.0.1", answers, "/404"))


def test_a_probe_of_nothing_listening_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    assert not probe(("127.0.0.1", port, "/health"))  # the port was just free: refused


def test_the_readiness_patch_sets_both_conditions_and_each_container() -> None:
    pod = probed_pod()
    pod["status"]["containerStatuses"] = [
        {"name": "server", "image": IMAGE, "ready": True, "restartCount": 0, "state": {}}
    ]
    when = datetime(2026, 11, 28, 18, 0, 5, tzinfo=UTC)
    down = readiness_patch(pod, False, when)
    assert down["conditions"] == [
        {
            "type": kind,
            "status": "False",
            "lastTransitionTime": "2026-11-28T18:00:05Z",
            "reason": "ContainersNotReady",
        }
        for kind in ("ContainersReady", "Ready")
    ]
    assert down["containerStatuses"] == [
        {"name": "server", "image": IMAGE, "ready": False, "restartCount": 0, "state": {}}
    ]
    up = readiness_patch(pod, True, when)
    assert [c["status"] for c in up["conditions"]] == ["True", "True"]
    assert [c["reason"] for c in up["conditions"]] == [None, None]  # deletes the old reason
    assert up["containerStatuses"][0]["ready"] is True
    del pod["status"]["containerStatuses"]
    assert "containerStatuses" not in readiness_patch(pod, True, when)
