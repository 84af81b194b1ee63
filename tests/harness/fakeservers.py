"""Light model servers on the pods' IPs, for tests of the control plane at a scale where real
`graft serve` processes (800 MB each) would not fit on the machine.

They speak the part of vLLM's API the operator uses: GET /v1/models (the base model and the
loaded adapters, with `parent`), POST /v1/load_lora_adapter and /v1/unload_lora_adapter, with
the pod's API key (from its Secret, as the kubelet would pass it) required on /v1/. A pod starts
with the `--lora-modules` of its command line, as a real server does. Everything else about a
model server (inference, adapter files) is tested with the real one elsewhere.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness.kube import Cluster


class FakeServer:
    def __init__(self, ip: str, base: str, adapters: set[str], key: str) -> None:
        self.base = base
        self.adapters = set(adapters)
        self.key = key
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((ip, 8000), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._reply(401, {"error": {"message": "missing or wrong API key"}})
                return False

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._reply(200, {})
                    return
                if not self._authorized():
                    return
                with server.lock:
                    data = [{"id": server.base, "parent": None}] + [
                        {"id": a, "parent": server.base} for a in sorted(server.adapters)
                    ]
                self._reply(200, {"object": "list", "data": data})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if not self._authorized():
                    return
                name = body.get("lora_name", "")
                with server.lock:
                    if self.path == "/v1/load_lora_adapter":
                        server.adapters.add(name)
                    elif self.path == "/v1/unload_lora_adapter":
                        server.adapters.discard(name)
                    else:
                        self._reply(404, {"error": {"message": "not found"}})
                        return
                self._reply(200, {})

            def log_message(self, *_: object) -> None:
                pass

        return Handler


class FakeModelServers:
    """One FakeServer per Running model-server pod of a namespace, started and stopped as the
    pods come and go (polled, like tests/harness/podservers.py)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.servers: dict[str, tuple[str, FakeServer]] = {}  # pod uid -> (pod name, server)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> FakeModelServers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for _, server in self.servers.values():
            server.stop()

    def serving(self, pod_name: str) -> set[str] | None:
        for name, server in self.servers.values():
            if name == pod_name:
                with server.lock:
                    return set(server.adapters)
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # keep going; the test reads the errors
                self.errors.append(repr(exc))
            self._stop.wait(0.5)

    def _sync(self) -> None:
        try:
            pods = self.cluster.list(
                "pods", self.namespace, "app.kubernetes.io/component=model-server"
            )
        except AssertionError:
            return  # the API server is away (a chaos test restarts it): ask again
        alive = {
            p["metadata"]["uid"]: p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") == "Running"
            and (p.get("status") or {}).get("podIP")
        }
        for uid in list(self.servers):
            if uid not in alive:
                self.servers.pop(uid)[1].stop()
        for uid, pod in alive.items():
            if uid not in self.servers:
                self.servers[uid] = (pod["metadata"]["name"], self._start(pod))

    def _start(self, pod: dict[str, Any]) -> FakeServer:
        container = pod["spec"]["containers"][0]
        args = list(container.get("args") or [])
        base = args[args.index("--served-model-name") + 1]
        adapters = set()
        if "--lora-modules" in args:
            for module in args[args.index("--lora-modules") + 1 :]:
                if module.startswith("--"):
                    break
                adapters.add(json.loads(module)["name"])
        key_ref = next(
            e["valueFrom"]["secretKeyRef"]
            for e in container.get("env") or []
            if e["name"] == "VLLM_API_KEY"
        )
        secret = self.cluster.get("secret", key_ref["name"], self.namespace)
        if secret is None:
            raise AssertionError(f"secret {key_ref['name']} is missing")
        key = base64.b64decode(secret["data"][key_ref["key"]]).decode()
        return FakeServer(pod["status"]["podIP"], base, adapters, key)
