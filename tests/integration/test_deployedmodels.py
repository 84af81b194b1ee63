"""Model and DeployedModel on the real API server, with real `graft serve` processes answering
on the pods' IPs (tests/harness/podservers.py stands in for the container runtime) and the
addon Models' inspection Jobs run by the kubelet stand-in (tests/harness/kubelet.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.dump import dump, dump_current, kebab
from harness.kube import Cluster, OperatorProcess, condition, server_key_header, wait_for
from harness.podservers import PodServers

# Every addon Model here is inspected by a Job in the test's namespace: the kubelet runs them.
pytestmark = [pytest.mark.dataplane, pytest.mark.usefixtures("kubelet")]

GROUP = "graft.dev/v1alpha1"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from graft.dataplane.smallmodels import build_tiny_model
    from harness.tinyadapters import broken_adapter, random_adapter

    root = tmp_path_factory.mktemp("artifacts")
    base = build_tiny_model(root / "base")
    return {
        "base": base,
        "sql": random_adapter(base, root / "sql", rank=8, seed=1),
        "poem": random_adapter(base, root / "poem", rank=8, seed=2),
        "big": random_adapter(base, root / "big", rank=32, seed=3),
        "broken": broken_adapter(root / "broken", rank=8),
    }


def obj(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def base_model(name: str, ns: str, path: Path) -> dict[str, Any]:
    return obj("Model", name, ns, {"kind": "Base", "source": {"uri": f"file://{path}"}})


def addon_model(name: str, ns: str, path: Path, base: str = "base") -> dict[str, Any]:
    return obj(
        "Model",
        name,
        ns,
        {"kind": "PeftAddon", "baseModel": base, "source": {"uri": f"file://{path}"}},
    )


def deployment(name: str, ns: str, replicas: int, **spec: Any) -> dict[str, Any]:
    body = {
        "baseModel": "base",
        "replicas": replicas,
        "engine": "Reference",
        "enableAddons": True,
        "maxAddons": 2,
        "maxAddonRank": 16,
        **spec,
    }
    return obj("Deployment", name, ns, body)


def deployed(name: str, ns: str, model: str, dep: str = "chat") -> dict[str, Any]:
    return obj("DeployedModel", name, ns, {"model": model, "deployment": dep})


def if_(obj: dict[str, Any] | None, pred: Any) -> dict[str, Any] | None:
    """obj when it exists and pred(obj) holds (for wait_for)."""
    return obj if obj and pred(obj) else None


def selector(dep: str) -> str:
    return f"graft.dev/deployment={dep}"


def live_pods(cluster: Cluster, ns: str, dep: str) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.list("pods", ns, selector(dep))
        if not p["metadata"].get("deletionTimestamp")
    ]


def served(cluster: Cluster, pod: dict[str, Any]) -> set[str] | None:
    """What the pod's server lists, or None when it has no IP yet or does not answer."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None  # just created: the scheduler and kwok have not given it an address yet
    req = urllib.request.Request(
        f"http://{ip}:8000/v1/models", headers=server_key_header(cluster, pod)
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return {m["id"] for m in json.load(r)["data"]}
    except (OSError, ValueError):
        return None


def dm_state(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return cluster.get("deployedmodels.graft.dev", name, ns)


def ready_with(cluster: Cluster, ns: str, name: str, loaded: int) -> dict[str, Any] | None:
    dm = dm_state(cluster, ns, name)
    ready = condition(dm, "Ready")
    if dm and ready and ready["status"] == "True" and dm["status"].get("loadedReplicas") == loaded:
        return dm
    return None


def all_pods_serve(
    servers: PodServers, cluster: Cluster, ns: str, dep: str, name: str, count: int
) -> bool:
    """`count` live pods, each answering from its own server that it serves `name`."""
    pods = live_pods(cluster, ns, dep)
    return len(pods) == count and all(
        servers.runs(p) and name in (served(cluster, p) or set()) for p in pods
    )


def reason_of(cluster: Cluster, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    dm = dm_state(cluster, ns, name)
    return dm if (condition(dm, "Ready") or {}).get("reason") == reason else None


@pytest.fixture
def servers(operator: OperatorProcess, namespace: str, tmp_path: Path) -> Iterator[PodServers]:
    with PodServers(
        operator.cluster, namespace, "app.kubernetes.io/component=model-server", tmp_path
    ) as s:
        yield s
    assert not s.errors, s.errors


def test_model_status_records_the_adapter(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path]
) -> None:
    cluster, ns = operator.cluster, namespace
    cluster.apply(
        [
            base_model("base", ns, artifacts["base"]),
            addon_model("big", ns, artifacts["big"]),
            addon_model("orphan", ns, artifacts["sql"], base="nope"),
        ]
    )
    big = wait_for(
        "addon Model Ready",
        lambda: if_(
            cluster.get("models.graft.dev", "big", ns),
            lambda m: (condition(m, "Ready") or {}).get("status") == "True",
        ),
    )
    dump(big, "ready-addon")
    assert big["status"]["loraRank"] == 32
    assert big["status"]["targetModules"] == ["q_proj", "v_proj"]
    assert big["status"]["name"] == f"accounts/{ns}/models/big"
    orphan = wait_for(
        "orphan waits",
        lambda: if_(
            cluster.get("models.graft.dev", "orphan", ns),
            lambda m: (condition(m, "Ready") or {}).get("reason") == "BaseModelNotFound",
        ),
    )
    dump(orphan, "base-model-not-found")
    assert orphan["status"]["state"] == "Waiting"


def test_the_adapter_is_read_in_the_tenants_namespace_never_by_the_operator(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """The operator reads no URI a tenant names: a Job in the Model's namespace does, and an
    adapter that cannot be read or is not one is never Ready, so no DeployedModel loads it."""
    cluster, ns = operator.cluster, namespace
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text('{"r": 0, "target_modules": ["q_proj"]}')
    cluster.apply(
        [
            base_model("base", ns, artifacts["base"]),
            addon_model("sql", ns, artifacts["sql"]),
            addon_model("missing", ns, tmp_path / "nowhere"),
            addon_model("bad", ns, bad),
            deployment("chat", ns, replicas=0),
            deployed("missing", ns, "missing"),
        ]
    )

    def model_reason(name: str, reason: str) -> dict[str, Any] | None:
        return if_(
            cluster.get("models.graft.dev", name, ns),
            lambda m: (condition(m, "Ready") or {}).get("reason") == reason,
        )

    sql = wait_for("sql inspected", lambda: model_reason("sql", "Validated"), timeout=60)
    assert (sql["status"]["loraRank"], sql["status"]["adapterSource"]) == (
        8,
        f"file://{artifacts['sql']}",
    )
    job = cluster.get("jobs", sql["status"]["jobName"], ns)
    assert job is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == sql["metadata"]["uid"]
    pod_spec = job["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    assert container["args"] == ["model", "inspect", str(artifacts["sql"])]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["automountServiceAccountToken"] is False

    missing = wait_for(
        "missing adapter unreadable", lambda: model_reason("missing", "AdapterUnreadable"), 60
    )
    dump(missing, "adapter-unreadable")
    assert missing["status"]["state"] == "Failed"
    assert "no such file" in condition(missing, "Ready")["message"]  # type: ignore[index]
    assert "loraRank" not in missing["status"]
    invalid = wait_for("r=0 refused", lambda: model_reason("bad", "InvalidAdapter"), 60)
    dump(invalid, "invalid-adapter")
    assert "no valid LoRA rank r (got 0)" in condition(invalid, "Ready")["message"]  # type: ignore[index]
    # A failed inspection is final for its source, until its Job is deleted (the README's way
    # to retry): then the adapter is read again.
    (bad / "adapter_config.json").write_text('{"r": 4, "target_modules": ["q_proj"]}')
    cluster.kubectl("delete", "job", invalid["status"]["jobName"], "-n", ns, "--wait=false")
    fixed_bad = wait_for("bad read again", lambda: model_reason("bad", "Validated"), 60)
    assert fixed_bad["status"]["loraRank"] == 4
    dm = wait_for(
        "the DeployedModel refused", lambda: reason_of(cluster, ns, "missing", "ModelInvalid")
    )
    dump(dm, "model-invalid")
    assert "AdapterUnreadable" in condition(dm, "Ready")["message"]  # type: ignore[index]

    # A new source is inspected anew: the old Job is replaced, the old facts are dropped.
    patch = {"spec": {"source": {"uri": f"file://{artifacts['big']}"}}}
    cluster.kubectl(
        "patch", "models.graft.dev/missing", "-n", ns, "--type=merge", "-p", json.dumps(patch)
    )
    fixed = wait_for("the new source read", lambda: model_reason("missing", "Validated"), 60)
    assert fixed["status"]["loraRank"] == 32
    assert fixed["status"]["adapterSource"] == f"file://{artifacts['big']}"
    job = cluster.get("jobs", fixed["status"]["jobName"], ns)
    assert job is not None
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-1] == str(artifacts["big"])
    # ... and the DeployedModel follows: rank 32 is above this Deployment's maxAddonRank.
    wait_for("RankTooHigh", lambda: reason_of(cluster, ns, "missing", "RankTooHigh"))


def test_addon_loaded_at_run_time_on_every_replica(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path], servers: PodServers
) -> None:
    cluster, ns = operator.cluster, namespace
    sql = f"accounts/{ns}/models/sql"
    cluster.apply(
        [
            base_model("base", ns, artifacts["base"]),
            addon_model("sql", ns, artifacts["sql"]),
            deployment("chat", ns, replicas=1),
        ]
    )
    cluster.kubectl(
        "wait", "deployments.graft.dev/chat", "-n", ns, "--for=condition=Ready", "--timeout=90s"
    )
    first = {p["metadata"]["uid"] for p in live_pods(cluster, ns, "chat")}
    dump_current(cluster, "models.graft.dev", "base", ns, "ready-base")

    # Loaded over HTTP into the running replica: no pod is restarted.
    cluster.apply(deployed("sql", ns, "sql"))
    dm = wait_for(
        "DeployedModel Ready on 1 replica", lambda: ready_with(cluster, ns, "sql", 1), timeout=120
    )
    assert dm["status"]["servedName"] == sql
    assert {p["metadata"]["uid"] for p in live_pods(cluster, ns, "chat")} == first
    assert all_pods_serve(servers, cluster, ns, "chat", sql, 1)

    # Scale 1 -> 3: the new replicas start with the addon on their command line.
    cluster.kubectl("scale", "deployments.graft.dev/chat", "-n", ns, "--replicas=3")
    dump(
        wait_for(
            "DeployedModel Ready on 3 replicas",
            lambda: ready_with(cluster, ns, "sql", 3),
            timeout=180,
        ),
        "loaded",
    )
    assert all_pods_serve(servers, cluster, ns, "chat", sql, 3)
    for pod in live_pods(cluster, ns, "chat"):
        if pod["metadata"]["uid"] in first:
            continue
        args = pod["spec"]["containers"][0]["args"]
        modules = [
            json.loads(a) for a in args[args.index("--lora-modules") + 1 :] if a.startswith("{")
        ]
        assert modules == [
            {
                "name": sql,
                "path": str(artifacts["sql"]),
                "base_model_name": f"accounts/{ns}/models/base",
            }
        ]
    dep = wait_for(
        "Deployment lists the addon",
        lambda: if_(
            cluster.get("deployments.graft.dev", "chat", ns),
            lambda d: (d.get("status") or {}).get("addons") == [sql],
        ),
    )
    assert dep["status"]["readyReplicas"] == 3

    # A replica deleted and recreated comes back with the addon.
    victim = live_pods(cluster, ns, "chat")[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")
    wait_for(
        "a replacement replica that serves the addon",
        lambda: (
            victim not in {p["metadata"]["name"] for p in live_pods(cluster, ns, "chat")}
            and all_pods_serve(servers, cluster, ns, "chat", sql, 3)
        ),
        timeout=180,
    )
    wait_for("DeployedModel back to 3/3", lambda: ready_with(cluster, ns, "sql", 3), timeout=60)

    # A request naming the addon is answered by the addon.
    pod = live_pods(cluster, ns, "chat")[0]
    body = json.dumps({"model": sql, "prompt": "hi", "max_tokens": 4, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"http://{pod['status']['podIP']}:8000/v1/completions",
        body,
        {"Content-Type": "application/json", **server_key_header(cluster, pod)},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        assert json.load(r)["model"] == sql

    # Deleting the DeployedModel unloads it from every replica, again without restarts.
    before = {p["metadata"]["uid"] for p in live_pods(cluster, ns, "chat")}
    cluster.kubectl("delete", "deployedmodels.graft.dev/sql", "-n", ns, "--timeout=60s")
    wait_for(
        "the addon unloaded everywhere",
        lambda: all(
            sql not in (served(cluster, p) or {sql}) for p in live_pods(cluster, ns, "chat")
        ),
        timeout=60,
    )
    assert {p["metadata"]["uid"] for p in live_pods(cluster, ns, "chat")} == before
    wait_for(
        "Deployment lists no addon",
        lambda: (
            (cluster.get("deployments.graft.dev", "chat", ns) or {}).get("status", {}).get("addons")
            == []
        ),
    )


def test_rejections_are_conditions_not_retries(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path]
) -> None:
    cluster, ns = operator.cluster, namespace
    cluster.apply(
        [
            base_model("base", ns, artifacts["base"]),
            base_model("other", ns, artifacts["base"]),
            addon_model("sql", ns, artifacts["sql"]),
            addon_model("poem", ns, artifacts["poem"]),
            addon_model("big", ns, artifacts["big"]),
            addon_model("foreign", ns, artifacts["sql"], base="other"),
            deployment("chat", ns, replicas=0, maxAddons=1),
            deployment("plain", ns, replicas=0, enableAddons=False),
        ]
    )
    # Every addon inspected first: a DeployedModel of a Model not Ready yet holds no slot.
    for addon in ("sql", "poem", "big", "foreign"):
        wait_for(
            f"{addon} inspected",
            lambda addon=addon: (
                (condition(cluster.get("models.graft.dev", addon, ns), "Ready") or {}).get("status")
                == "True"
            ),
            timeout=60,
        )
    assert (cluster.get("models.graft.dev", "big", ns) or {})["status"]["loraRank"] == 32
    cluster.apply(deployed("first", ns, "sql"))
    time.sleep(1)  # "first" is older: it holds the one addon slot
    cluster.apply(
        [
            deployed("second", ns, "poem"),
            deployed("disabled", ns, "sql", dep="plain"),
            deployed("mismatch", ns, "foreign"),
            deployed("too-big", ns, "big"),
        ]
    )
    expected = {
        "second": "TooManyAddons",
        "disabled": "AddonsDisabled",
        "mismatch": "BaseModelMismatch",
        "too-big": "RankTooHigh",
    }
    for name, reason in expected.items():
        dm = wait_for(
            f"{name} rejected with {reason}",
            lambda name=name, reason=reason: reason_of(cluster, ns, name, reason),
        )
        dump(dm, kebab(reason))
        assert dm["status"]["state"] == "Failed"
        assert condition(dm, "Ready")["status"] == "False"  # type: ignore[index]
    assert "rank 32" in condition(dm_state(cluster, ns, "too-big"), "Ready")["message"]  # type: ignore[index]
    assert (
        f"accounts/{ns}/models/other"
        in condition(dm_state(cluster, ns, "mismatch"), "Ready")["message"]
    )  # type: ignore[index]
    dump_current(cluster, "deployments.graft.dev", "chat", ns, "scaled-to-zero")
    # No retry loop: a rejected object is not rewritten while nothing changes.
    versions = {n: dm_state(cluster, ns, n)["metadata"]["resourceVersion"] for n in expected}  # type: ignore[index]
    time.sleep(3 * operator.settle_seconds)
    assert {
        n: dm_state(cluster, ns, n)["metadata"]["resourceVersion"] for n in expected
    } == versions  # type: ignore[index]
    # The slot frees up when the first one goes.
    cluster.kubectl("delete", "deployedmodels.graft.dev/first", "-n", ns, "--timeout=60s")
    dump(
        wait_for("second admitted", lambda: reason_of(cluster, ns, "second", "NoReadyReplicas")),
        "no-ready-replicas",
    )


def test_model_in_use_is_not_deleted(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path]
) -> None:
    cluster, ns = operator.cluster, namespace
    cluster.apply([base_model("base", ns, artifacts["base"]), deployment("chat", ns, replicas=0)])
    wait_for(
        "base model lists its deployment",
        lambda: (
            (cluster.get("models.graft.dev", "base", ns) or {}).get("status", {}).get("deployments")
            == [f"accounts/{ns}/deployments/chat"]
        ),
    )
    cluster.kubectl("delete", "models.graft.dev/base", "-n", ns, "--wait=false")
    model = wait_for(
        "InUse",
        lambda: if_(
            cluster.get("models.graft.dev", "base", ns),
            lambda m: (condition(m, "Ready") or {}).get("reason") == "InUse",
        ),
    )
    dump(model, "in-use")
    assert f"accounts/{ns}/deployments/chat" in condition(model, "Ready")["message"]  # type: ignore[index]
    time.sleep(2 * operator.settle_seconds)
    assert cluster.get("models.graft.dev", "base", ns) is not None
    cluster.kubectl("delete", "deployments.graft.dev/chat", "-n", ns, "--timeout=60s")
    wait_for(
        "the model deleted once unused",
        lambda: cluster.get("models.graft.dev", "base", ns) is None,
        timeout=60,
    )


def test_server_that_fails_the_load_leaves_it_not_ready(
    operator: OperatorProcess, namespace: str, artifacts: dict[str, Path], servers: PodServers
) -> None:
    cluster, ns = operator.cluster, namespace
    cluster.apply(
        [
            base_model("base", ns, artifacts["base"]),
            addon_model("broken", ns, artifacts["broken"]),
            deployment("chat", ns, replicas=1),
        ]
    )
    cluster.apply(deployed("broken", ns, "broken"))
    dm = wait_for("LoadFailed", lambda: reason_of(cluster, ns, "broken", "LoadFailed"), timeout=120)
    dump(dm, "load-failed")
    message = condition(dm, "Ready")["message"]  # type: ignore[index]
    assert "HTTP 4" in message or "HTTP 5" in message, message
    assert dm["status"]["loadedReplicas"] == 0
    # The broken addon is not put on new replicas' command lines: they still start.
    cluster.kubectl("scale", "deployments.graft.dev/chat", "-n", ns, "--replicas=2")
    wait_for(
        "2 replicas serving the base model",
        lambda: all_pods_serve(servers, cluster, ns, "chat", f"accounts/{ns}/models/base", 2),
        timeout=120,
    )
    for pod in live_pods(cluster, ns, "chat"):
        assert "--lora-modules" not in pod["spec"]["containers"][0]["args"]
