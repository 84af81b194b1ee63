"""Operator at scale: what `graft run` costs the API server and the machine for N Deployments,
against a plain `kubernetes` client creating the same Pods and Services (issue 14).

    PYTHONPATH=operator:tests python bench/operatorscale.py --n 100          # about 10 minutes
    PYTHONPATH=operator:tests python bench/operatorscale.py --quick          # N=10: 2 minutes
    PYTHONPATH=operator:tests python bench/operatorscale.py --only overhead,restart

Not a test: it prints figures (tests/integration/test_bench_operator.py runs --quick and
checks that every figure is there). --quick is a smoke run: N = 10, the operator's resync
period (GRAFT_RESYNC_SECONDS) 10 s instead of the production 300 s, and windows of 10 s, so its
per-minute rates are extrapolated from one short period; the full run uses the production
period and 60 s windows (`--window`). It runs against the local control plane (hack/localcluster:
kube-apiserver, controllers and kwok, which plays the kubelet: a pod bound to a fake node is
Running and Ready at once) and starts that cluster with an API-server audit log
(GRAFT_APISERVER_AUDIT=1) unless it is already up with one; it stops a cluster it started. It
needs a cluster of its own: the operator it starts reconciles every namespace, so point
GRAFT_CACHE_DIR and the GRAFT_*_PORT variables (hack/localcluster) away from a cluster other
tests use. The operator runs as `graft run` (tests/harness/kube.py's OperatorProcess) with
the production resync period, as its ServiceAccount under the shipped RBAC; every request it
makes is then in the audit log under that user, and this script's own requests under the
admin user, so the operator's figures are exact counts, not a difference against a baseline.
Reads are get, list and watch (a watch counts once, when it starts); writes are create,
update, patch, delete and deletecollection.

For each N, in fresh namespaces, one after another:

- overhead: the operator (already running, idle) converges N Deployments of one Model in one
  namespace (replicas 1, engine Reference, no GPU: kwok runs the pod): seconds from the first
  create of this script to every Deployment's Ready condition True. Then, with the operator
  stopped, this script creates the same N Pods and N Services directly (the shape copied from
  the first converged Deployment's pod and Service), one request after another, and waits for
  every pod Ready. Ratio = operator / raw; the issue's goal is <= 1.2 at N = 500.
- writes: the operator's writes during that convergence, by resource and verb, per Deployment
  (goal: the Pod, the Service and one status write); and, last for that namespace, writes per
  minute to the Model all N Deployments use once its deletion is requested (it is blocked by
  its users; goal 0), from 5 s after the request (the writes of those first seconds, the
  status that says why it waits, are counted apart), with the operator's reads per minute
  over the same window.
- idle: once the operator made no write for a resync period and the quiet time (10 s; 5 s
  with --quick), its requests per minute by verb over a window of --window seconds (goal: 0
  writes, reads not growing with N); the writes, if any, by resource; the operator's CPU over
  the window (utime + stime, /proc) in % of one core.
- restart: kill -9 with N converged, start it again: seconds until its last write before a
  quiet time, until every Deployment was named in one of its requests (re-checked), and pods
  beyond one per Deployment (duplicates; must be 0).
- memory: the operator's RSS (VmRSS, /proc) when started with no Graft object, with the N
  Deployments, with N Models more (all Ready), and with N unrelated Pods (no Graft label) in
  another namespace, each after a short settling time. The rows after "restart" and "delete"
  are of a newly started process (which has not grown through the convergence).
- delete: with the operator stopped, delete the N Models: whether they are gone (a finalizer
  holds them) and how long it took, within a time limit.
- addons: not measured here (a Deployment with D DeployedModels needs addon Models inspected
  by Jobs and model servers that answer HTTP); the line says so.

Other work on the machine weighs on every time, so the command line and the load average at
the start and the end are printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT / "tests", ROOT / "operator"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness.kube import Cluster, OperatorProcess  # noqa: E402

GROUP, VERSION = "graft.dev", "v1alpha1"
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READS = frozenset({"get", "list", "watch"})
FIGURES = ("overhead", "idle", "memory", "restart", "writes", "delete", "addons")
SOURCE = {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PODS_PER_NODE = 110  # hack/localcluster's NODE_RESOURCES


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the audit log -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float  # when the API server received it (epoch seconds)
    user: str
    verb: str
    resource: str  # resource[/subresource]
    namespace: str
    name: str


class Audit:
    """Follows the API server's audit log (JSON lines) by offset; one Request per audit ID
    (a watch logs when it starts and again when it ends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size  # what happened before this script is not ours
        self.seen: set[str] = set()
        self.requests: list[Request] = []
        self._partial = b""

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data, self._partial = self._partial + data, b""
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line, or b""
        for line in lines:
            if not line.strip():
                continue
            event = json.loads(line)
            audit_id = event["auditID"]
            if audit_id in self.seen:
                continue
            self.seen.add(audit_id)
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?"))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            self.requests.append(
                Request(
                    at=_epoch(event["requestReceivedTimestamp"]),
                    user=event["user"]["username"],
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                )
            )

    def by(self, user: str, start: float, end: float | None = None) -> list[Request]:
        self.poll()
        stop = end if end is not None else float("inf")
        return [r for r in self.requests if r.user == user and start <= r.at < stop]


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# --- the cluster and the operator ------------------------------------------------------------


def hack_env() -> dict[str, str]:
    return {**os.environ, "GRAFT_APISERVER_AUDIT": "1"}


def localcluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "localcluster"), *args],
        capture_output=True,
        text=True,
        env=hack_env(),
        check=False,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"hack/localcluster {' '.join(args)} failed:\n{proc.stderr}")
    return proc


class Bench:
    def __init__(self, kubeconfig: str, work: Path) -> None:
        from kubernetes import client, config

        from graft.core.settings import DEFAULT_RESYNC_SECONDS
        from graft.gen import rbac

        self.cluster = Cluster(kubeconfig=kubeconfig)
        self.work = work
        api_client = config.new_client_from_config(config_file=kubeconfig)
        api_client.user_agent = "graft-bench-operator"
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.api_client = api_client
        audit_log = Path(kubeconfig).parent / "audit.log"
        if not audit_log.exists():
            raise SystemExit(
                f"the cluster at {kubeconfig} keeps no audit log ({audit_log}): stop it "
                "(python3 hack/localcluster down) or point GRAFT_CACHE_DIR and the GRAFT_*_PORT "
                "variables at a cluster of the benchmark's own, and run again"
            )
        self.audit = Audit(audit_log)
        self.user = f"system:serviceaccount:{rbac.OPERATOR_NAMESPACE}:{rbac.OPERATOR_NAME}"
        self._install(rbac)
        self.operator: OperatorProcess | None = None
        self.namespaces: list[str] = []
        self.resync = DEFAULT_RESYNC_SECONDS

    def _install(self, rbac: Any) -> None:
        crds = str(ROOT / "crds")
        flags = ("--server-side", "--force-conflicts", "--field-manager=graft-bench")
        self.cluster.kubectl("apply", *flags, "-f", crds)
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
        namespace = {"apiVersion": "v1", "kind": "Namespace"}
        namespace["metadata"] = {"name": rbac.OPERATOR_NAMESPACE}  # type: ignore[assignment]
        self.cluster.apply([namespace, *rbac.manifests()], *flags)
        token = self.cluster.kubectl(
            "create", "token", rbac.OPERATOR_NAME, "-n", rbac.OPERATOR_NAMESPACE, "--duration=8h"
        ).stdout.strip()
        import yaml

        admin = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        admin["users"] = [{"name": "graft", "user": {"token": token}}]
        for context in admin["contexts"]:
            context["context"]["user"] = "graft"
        path = self.work / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(admin))
        path.chmod(0o600)
        self.operator_kubeconfig = str(path)

    # the operator process

    def start_operator(self) -> OperatorProcess:
        op = OperatorProcess(
            self.cluster,
            self.work / "operator.log",
            resync_seconds=self.resync,
            kubeconfig=self.operator_kubeconfig,
        )
        op.start()
        self.operator = op
        return op

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def kill_operator(self) -> None:
        assert self.operator is not None
        assert self.operator.proc is not None
        self.operator.proc.kill()
        self.operator.proc.wait()
        self.operator.stop()  # closes the log
        self.operator = None

    def rss_mb(self) -> float:
        assert self.operator is not None
        assert self.operator.proc is not None
        for line in Path(f"/proc/{self.operator.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc")

    def cpu_seconds(self) -> float:
        """The operator's CPU time so far (user + system, /proc)."""
        assert self.operator is not None
        assert self.operator.proc is not None
        stat = Path(f"/proc/{self.operator.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

    def quiet(self, since: float, quiet: float, timeout: float) -> float | None:
        """Wait until the operator made no write for `quiet` seconds; seconds from `since` to
        its last write (0 if none), or None at the timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            writes = [r for r in self.audit.by(self.user, since) if r.verb in WRITES]
            last = max((r.at for r in writes), default=since)
            if time.time() - last >= quiet:
                return last - since
            time.sleep(0.5)
        return None

    # namespaces and objects

    def namespace(self, prefix: str) -> str:
        name = f"bench-{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": name}})
        self.namespaces.append(name)
        return name

    def delete_namespaces(self, timeout: float) -> list[str]:
        """Delete every namespace this script made; the ones not gone within `timeout`."""
        from kubernetes.client.exceptions import ApiException

        names, self.namespaces = self.namespaces, []
        for name in names:
            try:
                self.core.delete_namespace(name)
            except ApiException as err:
                if err.status != 404:
                    raise
        wait(lambda: not any(map(self._exists, names)), timeout)
        return [name for name in names if self._exists(name)]

    def _exists(self, namespace: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespace(namespace)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def create(self, ns: str, plural: str, name: str, spec: dict[str, Any]) -> None:
        kind = {"models": "Model", "deployments": "Deployment"}[plural]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)

    def graft_objects(self, ns: str, plural: str) -> list[dict[str, Any]]:
        out = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)
        items: list[dict[str, Any]] = out["items"]
        return items

    def ready_count(self, ns: str, plural: str) -> int:
        return sum(1 for o in self.graft_objects(ns, plural) if _condition_true(o, "Ready"))

    def pods(self, ns: str, selector: str = "") -> list[dict[str, Any]]:
        raw = self.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(raw.data)["items"]
        return items

    def ensure_pod_capacity(self, pods: int) -> None:
        """Add kwok nodes until the cluster has room for `pods` more than it runs."""
        sys.path.insert(0, str(ROOT / "hack"))
        from localcluster.state import read_versions
        from localcluster.waiting import node_manifest

        nodes = self.core.list_node().items
        running = len(self.core.list_pod_for_all_namespaces().items)
        missing = pods + running - PODS_PER_NODE * len(nodes)
        index = 0
        while missing > 0:
            name = f"bench-node-{index}"
            if all(n.metadata.name != name for n in nodes):
                self.core.create_node(
                    node_manifest(name, f"127.{70 + index}.0.0/16", read_versions())
                )
                missing -= PODS_PER_NODE
            index += 1


def _condition_true(obj: dict[str, Any], type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _pod_ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and _condition_true(pod, "Ready")


def wait(probe: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(interval)
    return None


# --- the figures --------------------------------------------------------------------------------


@dataclass
class Settings:
    n: int
    window: float  # idle and blocked-deletion windows, seconds
    quiet: float  # no write for this long is quiet
    settle: float  # before an RSS reading
    converge_timeout: float
    delete_timeout: float


@dataclass
class Results:
    rows: dict[str, list[list[str]]]

    def add(self, figure: str, *cells: object) -> None:
        self.rows.setdefault(figure, []).append([str(c) for c in cells])


def per_minute(count: int, seconds: float) -> str:
    return f"{60 * count / seconds:.1f}"


def run_n(bench: Bench, s: Settings, only: set[str], out: Results) -> None:
    n = s.n
    bench.ensure_pod_capacity(2 * n + 10)
    op = bench.start_operator()
    time.sleep(s.settle)
    if "memory" in only:
        out.add("memory", n, "no Graft object", f"{bench.rss_mb():.0f}")

    # overhead (operator side) and writes per Deployment
    ns = bench.namespace("op")
    started = time.time()
    bench.create(ns, "models", "base", {"kind": "Base", "source": SOURCE})
    for i in range(n):
        spec = {"baseModel": "base", "replicas": 1, "engine": "Reference"}
        bench.create(ns, "deployments", f"d{i:04d}", spec)
    ok = wait(lambda: bench.ready_count(ns, "deployments") == n, s.converge_timeout)
    graft_seconds = time.time() - started
    if not ok:
        raise SystemExit(
            f"{n} Deployments not Ready after {s.converge_timeout:.0f} s; operator log: "
            f"{op.log_path}\n{op.tail(30)}"
        )
    log(f"operator converged {n} Deployments in {graft_seconds:.1f} s")
    settled = bench.quiet(started, s.quiet, timeout=max(60.0, s.converge_timeout))
    converge_writes = [r for r in bench.audit.by(bench.user, started) if r.verb in WRITES]
    converge_reads = [r for r in bench.audit.by(bench.user, started) if r.verb in READS]
    if "writes" in only:
        tail = "not quiet" if settled is None else f"{settled - graft_seconds:.1f} s"
        out.add(
            "writes",
            n,
            "all writes / reads per Deployment while converging",
            f"{len(converge_writes) / n:.2f} / {len(converge_reads) / n:.2f}",
        )
        out.add("writes", n, "last write after all Ready", tail)
        by_kind = Counter((r.resource, r.verb) for r in converge_writes)
        for (resource, verb), count in sorted(by_kind.items()):
            out.add("writes", n, f"  {verb} {resource}", f"{count / n:.2f}")

    if "idle" in only:
        # Idle: a whole resync period without a write first (a Model's first status may come
        # with its first resync, after its Deployments are Ready).
        if bench.quiet(started, bench.resync + s.quiet, timeout=3 * bench.resync) is None:
            log("the operator still writes after 3 resync periods; measuring idle anyway")
        begin, cpu = time.time(), bench.cpu_seconds()
        time.sleep(s.window)
        cpu = bench.cpu_seconds() - cpu
        requests = bench.audit.by(bench.user, begin, begin + s.window)
        verbs = Counter(r.verb for r in requests)
        for verb in sorted(READS | WRITES):
            if verbs.get(verb) or verb in ("get", "list", "watch", "patch"):
                out.add("idle", n, verb, per_minute(verbs.get(verb, 0), s.window))
        reads = sum(v for k, v in verbs.items() if k in READS)
        writes = sum(v for k, v in verbs.items() if k in WRITES)
        out.add("idle", n, "reads", per_minute(reads, s.window))
        out.add("idle", n, "writes", per_minute(writes, s.window))
        out.add("idle", n, "CPU, % of one core", f"{100 * cpu / s.window:.1f}")
        written = Counter((r.verb, r.resource) for r in requests if r.verb in WRITES)
        for (verb, resource), count in sorted(written.items()):
            out.add("idle", n, f"  {verb} {resource}", per_minute(count, s.window))
    if "memory" in only:
        out.add("memory", n, f"{n} Deployments converged", f"{bench.rss_mb():.0f}")

    shape_pod, shape_service = _shape(bench, ns, "d0000")

    if "restart" in only:
        bench.kill_operator()
        killed = time.time()
        bench.start_operator()
        up = time.time() - killed
        names = {f"d{i:04d}" for i in range(n)}
        touched: dict[str, float] = {}

        def everyone_rechecked() -> bool:
            for r in bench.audit.by(bench.user, killed):
                if r.resource.startswith("deployments") and r.namespace == ns and r.name in names:
                    touched.setdefault(r.name, r.at - killed)
            return len(touched) == n

        # Re-checked: the operator sent a request that names the Deployment (it reads each
        # one before it reconciles it). At the latest its periodic resync does.
        wait(everyone_rechecked, 2 * bench.resync + s.converge_timeout, interval=1.0)
        quiet = bench.quiet(killed, s.quiet, timeout=max(120.0, s.converge_timeout))
        pods = [p for p in bench.pods(ns) if not p["metadata"].get("deletionTimestamp")]
        owners = Counter(p["metadata"]["labels"].get("graft.dev/deployment") for p in pods)
        duplicates = sum(c - 1 for c in owners.values() if c > 1)
        after = [r for r in bench.audit.by(bench.user, killed) if r.verb in WRITES]
        out.add("restart", n, "seconds until the new operator is live", f"{up:.1f}")
        last_write = "not quiet" if quiet is None else f"{quiet:.1f}"
        out.add(
            "restart",
            n,
            "seconds until its last write (then quiet)",
            last_write if after else "no write",
        )
        everyone = len(touched) == n
        out.add(
            "restart",
            n,
            f"seconds until every Deployment re-checked ({len(touched)}/{n})",
            f"{max(touched.values()):.1f}" if everyone else "not all",
        )
        out.add("restart", n, "writes after the restart", len(after))
        out.add("restart", n, "duplicate pods", duplicates)

    if "writes" in only:
        asked = time.time()
        bench.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "models", "base")
        time.sleep(min(5.0, s.window / 4))  # the first reaction is not the steady rate
        begin = time.time()
        time.sleep(s.window)

        def model_writes(start: float, end: float) -> list[Request]:
            return [
                r
                for r in bench.audit.by(bench.user, start, end)
                if r.verb in WRITES and r.resource.startswith("models") and r.name == "base"
            ]

        requests = bench.audit.by(bench.user, begin, begin + s.window)
        to_model = model_writes(begin, begin + s.window)
        out.add(
            "writes",
            n,
            f"writes to that Model in the {begin - asked:.0f} s after the delete request",
            len(model_writes(asked, begin)),
        )
        blocked_reads = [r for r in requests if r.verb in READS]
        out.add(
            "writes",
            n,
            f"writes/min to a Model whose deletion {n} Deployments block",
            per_minute(len(to_model), s.window),
        )
        out.add(
            "writes", n, "  operator reads/min meanwhile", per_minute(len(blocked_reads), s.window)
        )

    # memory with N Models, then deleting them with the operator stopped
    if "memory" in only or "delete" in only:
        models_ns = bench.namespace("models")
        for i in range(n):
            bench.create(models_ns, "models", f"m{i:04d}", {"kind": "Base", "source": SOURCE})
        if not wait(lambda: bench.ready_count(models_ns, "models") == n, s.converge_timeout):
            log(f"not every Model Ready after {s.converge_timeout:.0f} s")
        time.sleep(s.settle)
        if "memory" in only:
            out.add("memory", n, f"and {n} Models Ready", f"{bench.rss_mb():.0f}")
        if "delete" in only:
            bench.stop_operator()
            begin = time.time()
            for i in range(n):
                bench.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, models_ns, "models", f"m{i:04d}"
                )
            gone = wait(lambda: not bench.graft_objects(models_ns, "models"), s.delete_timeout)
            left = len(bench.graft_objects(models_ns, "models"))
            out.add(
                "delete",
                n,
                "Models deleted with the operator stopped",
                f"done in {time.time() - begin:.1f} s"
                if gone
                else f"NOT done: {left}/{n} left after {s.delete_timeout:.0f} s",
            )
            bench.start_operator()

    if "memory" in only:
        other = bench.namespace("other")
        containers = [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]
        for i in range(n):
            unrelated = {"metadata": {"name": f"p{i:04d}"}, "spec": {"containers": containers}}
            bench.core.create_namespaced_pod(other, unrelated)
        wait(lambda: sum(map(_pod_ready, bench.pods(other))) == n, s.converge_timeout)
        time.sleep(s.settle)
        out.add("memory", n, f"and {n} unrelated Pods", f"{bench.rss_mb():.0f}")

    if "addons" in only:
        out.add("addons", n, "API and HTTP calls per resync, D DeployedModels", "not measured")

    if stuck := bench.delete_namespaces(s.converge_timeout):
        log(f"namespaces not gone after {s.converge_timeout:.0f} s: {', '.join(stuck)}")
    bench.stop_operator()

    if "overhead" in only:
        raw_seconds = raw_client(bench, s, shape_pod, shape_service)
        out.add(
            "overhead",
            n,
            f"{raw_seconds:.1f} s",
            f"{graft_seconds:.1f} s",
            f"{graft_seconds / raw_seconds:.2f}",
        )


def _shape(bench: Bench, ns: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod and Service the operator made for Deployment `name`, as a client would send them:
    no server-set fields, no owner, no node."""
    pod = next(
        p for p in bench.pods(ns) if p["metadata"]["labels"].get("graft.dev/deployment") == name
    )
    service = json.loads(bench.core.read_namespaced_service(name, ns, _preload_content=False).data)
    keep = ("labels", "annotations")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {k: v for k, v in pod["metadata"].items() if k in keep},
        "spec": {k: v for k, v in pod["spec"].items() if k != "nodeName"},
    }
    service_spec = {
        k: v
        for k, v in service["spec"].items()
        if k not in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {k: v for k, v in service["metadata"].items() if k in keep},
        "spec": service_spec,
    }
    return pod, service


def raw_client(
    bench: Bench, s: Settings, shape_pod: dict[str, Any], shape_service: dict[str, Any]
) -> float:
    """The plain client's side of the overhead ratio: seconds to create N Services and N Pods
    of the operator's shape and see every pod Ready (the operator is not running)."""
    ns = bench.namespace("raw")
    started = time.time()
    for i in range(s.n):
        name = f"d{i:04d}"
        service = copy.deepcopy(shape_service)
        service["metadata"]["name"] = name
        service["metadata"]["labels"] = {
            **service["metadata"].get("labels", {}),
            "graft.dev/deployment": name,
        }
        service["spec"]["selector"] = {**service["spec"]["selector"], "graft.dev/deployment": name}
        bench.core.create_namespaced_service(ns, service)
        pod = copy.deepcopy(shape_pod)
        pod["metadata"]["name"] = f"{name}-0"
        pod["metadata"]["labels"] = {**pod["metadata"]["labels"], "graft.dev/deployment": name}
        bench.core.create_namespaced_pod(ns, pod)
    ok = wait(lambda: sum(map(_pod_ready, bench.pods(ns))) == s.n, s.converge_timeout)
    seconds = time.time() - started
    if not ok:
        raise SystemExit(f"the raw client's {s.n} pods not Ready after {s.converge_timeout:.0f} s")
    log(f"raw client: {s.n} Pods + Services Ready in {seconds:.1f} s")
    bench.delete_namespaces(s.converge_timeout)
    return seconds


# --- output ---------------------------------------------------------------------------------

TITLES = {
    "overhead": (
        "Converge N Deployments (replicas 1) vs creating the same Pods+Services directly",
        ["N", "Raw client", "Graft", "Ratio"],
    ),
    "idle": (
        "Operator API requests per minute while idle, by verb (after convergence)",
        ["N", "verb", "per minute"],
    ),
    "memory": ("Operator RSS (MB)", ["N", "with", "RSS MB"]),
    "restart": ("kill -9 with N converged, then start again", ["N", "figure", "value"]),
    "writes": ("Operator writes", ["N", "figure", "value"]),
    "delete": ("Deleting N Models with the operator stopped", ["N", "figure", "result"]),
    "addons": ("Addons: one Deployment with D DeployedModels", ["N", "figure", "value"]),
}


def print_tables(results: Results, figures: Iterable[str]) -> None:
    for figure in figures:
        rows = results.rows.get(figure)
        if not rows:
            continue
        title, header = TITLES[figure]
        print(f"\n{figure}: {title}")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100", help="numbers of Deployments, comma-separated")
    parser.add_argument("--quick", action="store_true", help="N=10 and short windows (smoke)")
    parser.add_argument("--only", default=",".join(FIGURES), help="figures, comma-separated")
    parser.add_argument("--window", type=float, default=60.0, help="idle/blocked window, s")
    args = parser.parse_args()
    only = {f.strip() for f in args.only.split(",") if f.strip()}
    if unknown := only - set(FIGURES):
        parser.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    sizes = [10] if args.quick else [int(v) for v in args.n.split(",")]
    # Idle reads come from the resync: every object is queued again at a random point of the
    # second half of each period, so a window's rate is an average over the period's spread.
    # --quick shortens the operator's period so that a short window sees it.
    resync = 10.0 if args.quick else None
    window = 10.0 if args.quick else args.window

    print("graft operator at scale: the operator (graft run) against a plain kubernetes client")
    print(f"command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"Python {sys.version.split()[0]}"
    )
    already_up = localcluster("kubeconfig", check=False).returncode == 0
    kubeconfig = localcluster("up").stdout.strip().splitlines()[-1]
    import tempfile

    results = Results({})
    try:
        with tempfile.TemporaryDirectory(prefix="graft-bench-operator-") as tmp:
            bench = Bench(kubeconfig, Path(tmp))
            bench.resync = resync or bench.resync
            print(
                f"operator: graft run, GRAFT_RESYNC_SECONDS={bench.resync:g}; idle and blocked "
                f"windows {window:g} s"
            )
            try:
                for n in sizes:
                    settings = Settings(
                        n=n,
                        window=window,
                        quiet=5.0 if args.quick else 10.0,
                        settle=3.0 if args.quick else 10.0,
                        converge_timeout=60.0 + 2.0 * n,
                        delete_timeout=10.0 if args.quick else 60.0 + n / 5,
                    )
                    log(f"N = {n}")
                    run_n(bench, settings, only, results)
            finally:
                if bench.operator is not None:
                    print(f"operator log (last lines):\n{bench.operator.tail(20)}", file=sys.stderr)
                bench.stop_operator()
                bench.delete_namespaces(0)
    finally:
        if not already_up:
            localcluster("down", check=False)
        print_tables(results, FIGURES)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
