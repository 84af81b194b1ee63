"""`graft localnode` on a real API server, as `make demo` runs it: a Deployment's model-server
pod (Graft's runtime image, the Reference engine, a tiny model) runs as a local process on the
pod's IP; the pod is Ready only while its server answers its own readinessProbe (kwok alone
says Ready at once); a server that dies is restarted and the pod is not Ready meanwhile; its
log is where the docs say; deleting the pod ends its process; stopping the local node ends
every process it started and removes its pid file.

A kubectl watch records every version of the pod, so the test checks the order of what the
API server saw, not what a poll happened to catch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.kube import ROOT, Cluster, OperatorProcess, condition, wait_for

GROUP = "graft.dev/v1alpha1"
SELECTOR = "app.kubernetes.io/component=model-server"
GRAFT = [sys.executable, "-m", "graft.cli"]

pytestmark = pytest.mark.dataplane


def obj(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": ns} if ns else {})
    return {"apiVersion": GROUP, "kind": kind, "metadata": meta, "spec": spec}


class PodWatch:
    """`kubectl get pods -w -o json` into a file: every version of the namespace's server pods."""

    def __init__(self, cluster: Cluster, ns: str, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            [cluster.kubectl_path, "get", "pods", "-n", ns, "-l", SELECTOR, "-w", "-o", "json"],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
        )

    def versions(self) -> list[dict[str, Any]]:
        text, decoder, out, at = self.path.read_text(), json.JSONDecoder(), [], 0
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                return out
            try:
                item, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                return out  # a version still being written
            out.append(item)

    def readiness(self, uid: str) -> list[tuple[str, str]]:
        """(Ready status, reason) of each version of the pod, in order, repeats folded."""
        seen: list[tuple[str, str]] = []
        for pod in self.versions():
            if pod["metadata"]["uid"] != uid:
                continue
            ready = condition(pod, "Ready")
            if ready is None:
                continue
            now = (ready["status"], ready.get("reason", ""))
            if not seen or seen[-1] != now:
                seen.append(now)
        return seen

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._out.close()


def server_processes(pod_ip: str) -> list[int]:
    """Pids of `graft serve` processes bound to this pod IP."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "graft.cli" in words and "serve" in words and pod_ip in words:
            found.append(int(entry.name))
    return found


def health(pod_ip: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:8000/health", timeout=5) as r:
            return int(r.status)
    except OSError:
        return 0


@pytest.fixture
def account(operator: OperatorProcess) -> Iterator[str]:
    cluster = operator.cluster
    acct = f"ln-{uuid.uuid4().hex[:6]}"
    cluster.apply(obj("Account", acct, None, {"deletionPolicy": "Delete"}))
    wait_for(
        "the Account Ready",
        lambda: condition(cluster.get("accounts.graft.dev", acct), "Ready"),
        timeout=60,
    )
    try:
        yield acct
    finally:
        cluster.kubectl("delete", "accounts.graft.dev", acct, "--wait=false", check=False)


def test_the_local_node_runs_a_server_pod_and_tells_its_readiness_truly(
    operator: OperatorProcess, account: str, tmp_path: Path
) -> None:
    from graft.dataplane.smallmodels import build_tiny_model

    cluster = operator.cluster
    base = build_tiny_model(tmp_path / "base")
    node_dir = tmp_path / "node"
    watch = PodWatch(cluster, account, tmp_path / "pods.json")
    node = subprocess.Popen(
        [
            *GRAFT,
            "localnode",
            "--namespace",
            account,
            "--kubeconfig",
            cluster.kubeconfig,
            "--dir",
            str(node_dir),
        ],
        stdout=(tmp_path / "localnode.out").open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    try:
        cluster.apply(
            [
                obj(
                    "Model", "base", account, {"kind": "Base", "source": {"uri": f"file://{base}"}}
                ),
                obj(
                    "Deployment",
                    "chat",
                    account,
                    {"baseModel": "base", "replicas": 1, "engine": "Reference"},
                ),
            ]
        )
        wait_for(
            "the Deployment Ready",
            lambda: condition(cluster.get("deployments.graft.dev", "chat", account), "Ready"),
            timeout=240,
        )
        (pod,) = cluster.list("pods", account, SELECTOR)
        uid, ip, name = pod["metadata"]["uid"], pod["status"]["podIP"], pod["metadata"]["name"]
        # kwok said Ready at once; the local node said not Ready until the server answered.
        wait_for(
            "the pod Ready again, by the local node",
            lambda: len(watch.readiness(uid)) >= 3,
            timeout=180,
        )
        assert watch.readiness(uid) == [("True", ""), ("False", "ContainersNotReady"), ("True", "")]
        assert health(ip) == 200, "the pod's IP answers: its server really runs"
        assert len(server_processes(ip)) == 1

        # Its log is where the docs say, and `graft localnode logs` prints it.
        logs = subprocess.run(
            [*GRAFT, "localnode", "--dir", str(node_dir), "logs", name, "-n", account],
            capture_output=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
        )
        assert logs.returncode == 0, logs.stderr
        assert (node_dir / "logs" / account / name / "model-server.log").read_bytes() == logs.stdout

        # A server that dies: not Ready, started again, Ready once it answers.
        for pid in server_processes(ip):
            os.kill(pid, signal.SIGKILL)
        wait_for(
            "the pod not Ready, then Ready again",
            lambda: watch.readiness(uid)[3:] == [("False", "ContainersNotReady"), ("True", "")],
            timeout=120,
        )
        assert health(ip) == 200

        # Deleting the pod ends its process (before kwok may give its IP to another pod).
        cluster.kubectl("delete", "deployments.graft.dev", "chat", "-n", account)
        wait_for("the server's process ended", lambda: not server_processes(ip), timeout=60)
    finally:
        watch.stop()
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=30)
        output = (tmp_path / "localnode.out").read_text()
    assert code == 0, output
    assert "every process it started has ended" in output
    assert not (node_dir / "localnode.pid").exists()
