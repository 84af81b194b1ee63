"""No tenant can stall the operator: model servers that misbehave on purpose, on the pods' IPs.

A tenant owns its model-server pods, so whatever answers on a pod's IP is the tenant's to choose.
Here one "replica" drips a byte every two seconds forever and the other sends 100 MB, behind ten
DeployedModels; meanwhile another tenant's Account must become Ready as fast as it does on a
quiet operator, and the operator's memory must not grow by the size of the answers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.kube import Cluster, OperatorProcess, condition, wait_for

GROUP = "graft.dev/v1alpha1"
ADDONS = 10


def obj(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": GROUP, "kind": kind, "metadata": meta, "spec": spec}


def adapter_dir(root: Path, name: str) -> Path:
    """An adapter directory the Model reconciler accepts (its config says rank and targets);
    no weights are needed: no real server ever loads it here."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def _handler(behave: Callable[[BaseHTTPRequestHandler], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            behave(self)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            behave(self)

        def log_message(self, *_: object) -> None:
            pass

    return Handler


def drip(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    try:
        for _ in range(600):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(2)
    except OSError:
        pass


def flood(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(100 << 20))
    h.end_headers()
    chunk = b" " * (1 << 20)
    try:
        for _ in range(100):
            h.wfile.write(chunk)
    except OSError:
        pass


@contextmanager
def serve_on(ip: str, behave: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[None]:
    httpd = ThreadingHTTPServer((ip, 8000), _handler(behave))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


def rss_mib(op: OperatorProcess) -> float:
    assert op.proc is not None
    for line in Path(f"/proc/{op.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def ready(cluster: Cluster, kind: str, name: str, ns: str | None = None) -> dict[str, Any] | None:
    found = cluster.get(kind, name, ns)
    return found if (condition(found, "Ready") or {}).get("status") == "True" else None


def account_ready_seconds(cluster: Cluster, name: str) -> float:
    started = time.monotonic()
    cluster.apply(obj("Account", name, None, {"displayName": "bystander", "quota": {"gpus": 1}}))
    wait_for(f"Account {name} Ready", lambda: ready(cluster, "accounts.graft.dev", name), 120)
    return time.monotonic() - started


@pytest.fixture
def bystanders(operator: OperatorProcess) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        operator.cluster.kubectl("delete", "accounts.graft.dev", name, "--wait=false")


def test_stalling_model_servers_do_not_stall_other_tenants(
    operator: OperatorProcess, namespace: str, tmp_path: Path, bystanders: list[str]
) -> None:
    cluster, ns = operator.cluster, namespace
    # A quiet operator first: how long an Account takes here, now.
    bystanders.append(f"calm-{uuid.uuid4().hex[:6]}")
    calm = account_ready_seconds(cluster, bystanders[-1])

    base = tmp_path / "base"
    base.mkdir()
    cluster.apply(
        [
            obj("Model", "base", ns, {"kind": "Base", "source": {"uri": f"file://{base}"}}),
            *[
                obj(
                    "Model",
                    f"a{i}",
                    ns,
                    {
                        "kind": "PeftAddon",
                        "baseModel": "base",
                        "source": {"uri": f"file://{adapter_dir(tmp_path, f'a{i}')}"},
                    },
                )
                for i in range(ADDONS)
            ],
            obj(
                "Deployment",
                "stall",
                ns,
                {
                    "baseModel": "base",
                    "replicas": 2,
                    "engine": "Reference",
                    "enableAddons": True,
                    "maxAddons": ADDONS,
                    "maxAddonRank": 16,
                },
            ),
        ]
    )

    def pod_ips() -> list[str] | None:
        pods = cluster.list("pods", ns, "graft.dev/deployment=stall")
        ips = sorted((p.get("status") or {}).get("podIP") or "" for p in pods)
        return ips if len(ips) == 2 and all(ips) else None

    ips = wait_for("two model-server pods with IPs", pod_ips, timeout=60)
    assert ips is not None
    with ExitStack() as stack:
        stack.enter_context(serve_on(ips[0], drip))
        stack.enter_context(serve_on(ips[1], flood))
        rss_before = rss_mib(operator)
        cluster.apply(
            [
                obj("DeployedModel", f"dm{i}", ns, {"model": f"a{i}", "deployment": "stall"})
                for i in range(ADDONS)
            ]
        )

        def all_waiting() -> list[str] | None:
            dms = cluster.list("deployedmodels.graft.dev", ns)
            said = [(condition(d, "Ready") or {}).get("message", "") for d in dms]
            answered = [m for m in said if "no complete answer" in m and "more than 1048576" in m]
            return answered if len(answered) == ADDONS else None

        # The operator keeps asking (the session's operator resyncs every 2 s) and says why the
        # addons are not loaded, instead of hanging on the answers.
        wait_for("every DeployedModel to say its servers do not answer", all_waiting, 90)

        bystanders.append(f"busy-{uuid.uuid4().hex[:6]}")
        busy = account_ready_seconds(cluster, bystanders[-1])
        time.sleep(10)  # ten more seconds of drip and flood
        rss_after = rss_mib(operator)

    dm = cluster.get("deployedmodels.graft.dev", "dm0", ns)
    assert (condition(dm, "Ready") or {}).get("status") == "False"
    # "Within its normal time": the quiet figure, with room for one resync of scheduling noise.
    assert busy <= max(2 * calm, calm + 10), (calm, busy)
    # 10 DeployedModels x 2 replicas x 100 MB would be gigabytes if answers were read whole.
    assert rss_after - rss_before < 100, (rss_before, rss_after)
    print(
        f"\nAccount Ready: {calm:.1f} s quiet, {busy:.1f} s with stalling servers; "
        f"operator RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
