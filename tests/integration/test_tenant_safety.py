"""No tenant can stall the operator: model servers that misbehave on purpose, on the pods' IPs.

A tenant owns its model-server pods, so whatever answers on a pod's IP is the tenant's to choose.
Here one "replica" drips a byte every two seconds forever and the other sends 100 MB, behind ten
DeployedModels; meanwhile another tenant's Account must become Ready as fast as it does on a
quiet operator, and the operator's memory must not grow by the size of the answers.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from harness.dump import dump
from harness.httpfake import Behave, serving
from harness.kube import Cluster, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn

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


def serve_on(ip: str, behave: Behave) -> AbstractContextManager[str]:
    return serving(behave, ip, 8000)


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
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
    bystanders: list[str],
    kubelet: KubeletStandIn,
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
    # The addons' inspection Jobs (run by the kubelet stand-in) are done before the clock starts.
    wait_for(
        "every addon Model inspected",
        lambda: all(ready(cluster, "models.graft.dev", f"a{i}", ns) for i in range(ADDONS)),
        timeout=120,
    )
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


# --- Accounts: Pod Security, NetworkPolicy, and deletions that wait without writing ---------------


def account_obj(name: str, **spec: Any) -> dict[str, Any]:
    return obj("Account", name, None, spec)


@pytest.fixture
def accounts(operator: OperatorProcess) -> Iterator[Callable[..., str]]:
    """Make Accounts with unique IDs; delete them with everything in them afterwards."""
    cluster = operator.cluster
    made: list[str] = []

    def make(prefix: str, **spec: Any) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        cluster.apply(account_obj(name, **spec))
        made.append(name)
        wait_for(f"Account {name} Ready", lambda: ready(cluster, "accounts.graft.dev", name), 120)
        return name

    yield make
    for name in made:
        cluster.kubectl(
            "patch", "accounts.graft.dev", name, "--type=merge",
            "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False,
        )  # fmt: skip
        cluster.kubectl("delete", "accounts.graft.dev", name, "--wait=false", check=False)


def test_account_namespaces_enforce_restricted_and_fence_model_servers(
    operator: OperatorProcess, accounts: Callable[..., str]
) -> None:
    cluster = operator.cluster
    name = accounts("psa")
    ns = cluster.get("namespace", name)
    assert ns is not None
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The API server itself refuses a pod that is not "restricted" there.
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": name},
        "spec": {
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]
        },
    }
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(privileged), check=False)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr, refused.stderr
    # Someone loosens the namespace: the operator puts the label back.
    cluster.kubectl(
        "label", "--overwrite", "namespace", name, "pod-security.kubernetes.io/enforce=privileged"
    )
    wait_for(
        "the restricted label restored",
        lambda: (
            (cluster.get("namespace", name) or {})["metadata"]["labels"].get(
                "pod-security.kubernetes.io/enforce"
            )
            == "restricted"
        ),
        timeout=30,
    )
    policy = cluster.get("networkpolicy", "graft-model-servers", name)
    assert policy is not None
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "model-server"}
    }
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"podSelector": {}} in sources
    graft_peer = next(p for p in sources if "namespaceSelector" in p)
    assert graft_peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "graft-system"
    }


def test_blocked_deletions_wait_for_events_without_writing(
    operator: OperatorProcess, accounts: Callable[..., str], tmp_path: Path
) -> None:
    cluster = operator.cluster
    name = accounts("blk")
    base = tmp_path / "base"
    base.mkdir()
    cluster.apply(
        [
            obj("Model", "base", name, {"kind": "Base", "source": {"uri": f"file://{base}"}}),
            obj("Deployment", "chat", name, {"baseModel": "base", "engine": "Reference"}),
        ]
    )
    wait_for("Model Ready", lambda: ready(cluster, "models.graft.dev", "base", name), 60)
    # The in-use finalizer comes with the first user (the Deployment), not with the Model.
    wait_for(
        "the Model protected while the Deployment uses it",
        lambda: (
            "graft.dev/in-use-protection"
            in ((cluster.get("models.graft.dev", "base", name) or {}).get("metadata") or {}).get(
                "finalizers", []
            )
        ),
        60,
    )

    cluster.kubectl("delete", "models.graft.dev", "base", "-n", name, "--wait=false")
    cluster.kubectl("delete", "accounts.graft.dev", name, "--wait=false")

    def reason(kind: str, obj_name: str, ns: str | None, want: str) -> dict[str, Any] | None:
        found = cluster.get(kind, obj_name, ns)
        return found if (condition(found, "Ready") or {}).get("reason") == want else None

    wait_for("the Model in use", lambda: reason("models.graft.dev", "base", name, "InUse"), 60)
    wait_for(
        "the Account blocked",
        lambda: reason("accounts.graft.dev", name, None, "DeletionBlocked"),
        60,
    )
    time.sleep(3)  # let the last status writes land
    versions = {
        "model": cluster.get("models.graft.dev", "base", name)["metadata"]["resourceVersion"],  # type: ignore[index]
        "account": cluster.get("accounts.graft.dev", name)["metadata"]["resourceVersion"],  # type: ignore[index]
    }
    # The session's operator resyncs every 2 s: a minute is thirty chances to write.
    time.sleep(60)
    after = {
        "model": cluster.get("models.graft.dev", "base", name)["metadata"]["resourceVersion"],  # type: ignore[index]
        "account": cluster.get("accounts.graft.dev", name)["metadata"]["resourceVersion"],  # type: ignore[index]
    }
    assert after == versions, "a blocked deletion was written to while it waited"

    # What blocked them goes: both go, on events, without a timer.
    started = time.monotonic()
    cluster.kubectl("delete", "deployments.graft.dev", "chat", "-n", name)
    wait_for("the Model gone", lambda: cluster.get("models.graft.dev", "base", name) is None, 30)
    wait_for("the Account gone", lambda: cluster.get("accounts.graft.dev", name) is None, 60)
    print(f"\nblocked deletions: 0 writes in 60 s; released in {time.monotonic() - started:.1f} s")


def test_user_access_ends_even_with_the_operator_down(
    operator: OperatorProcess, accounts: Callable[..., str]
) -> None:
    cluster = operator.cluster
    name = accounts("usr")
    cluster.apply(
        {
            "apiVersion": GROUP,
            "kind": "User",
            "metadata": {"name": "dora", "namespace": name},
            "spec": {"email": "dora@example.com", "role": "member"},
        }
    )
    wait_for("User Ready", lambda: ready(cluster, "users.graft.dev", "dora", name), 60)
    user = cluster.get("users.graft.dev", "dora", name)
    assert user is not None
    assert not user["metadata"].get("finalizers"), user["metadata"].get("finalizers")
    binding = cluster.get("rolebinding", "graft-user-dora", name)
    assert binding is not None
    assert binding["metadata"]["ownerReferences"][0]["uid"] == user["metadata"]["uid"]

    # A binding of the User's name that Graft did not make is not taken over.
    cluster.kubectl(
        "create", "rolebinding", "graft-user-mallory", "-n", name, "--clusterrole=graft-admin",
        "--user=mallory@example.com",
    )  # fmt: skip
    cluster.apply(user_obj("mallory", name, "viewer"))
    conflict = wait_for(
        "RoleBindingConflict",
        lambda: if_reason(cluster.get("users.graft.dev", "mallory", name), "RoleBindingConflict"),
    )
    dump(conflict, "role-binding-conflict")
    taken = cluster.get("rolebinding", "graft-user-mallory", name)
    assert taken is not None
    assert taken["roleRef"]["name"] == "graft-admin"
    assert not taken["metadata"].get("ownerReferences")

    operator.stop()
    try:
        cluster.kubectl("delete", "users.graft.dev", "dora", "-n", name, "--timeout=20s")
        wait_for(
            "the RoleBinding gone with the operator down",
            lambda: cluster.get("rolebinding", "graft-user-dora", name) is None,
            timeout=30,
        )
        can = cluster.kubectl(
            "auth", "can-i", "create", "deployments.graft.dev", "-n", name,
            "--as=dora@example.com", check=False,
        )  # fmt: skip
        assert can.stdout.strip() == "no"
        # With nobody reconciling, what Argo CD sees: objects with no status yet, and specs
        # newer than their status (real objects for deploy/argocd's fixtures).
        cluster.apply(user_obj("newbie", name, "viewer"))
        dump(cluster.get("users.graft.dev", "newbie", name), "new")
        cluster.apply(user_obj("mallory", name, "member"))
        dump(cluster.get("users.graft.dev", "mallory", name), "generation-behind")
        cluster.apply(account_obj(f"{name}-new"))
        dump(cluster.get("accounts.graft.dev", f"{name}-new"), "new")
        cluster.kubectl(
            "patch", "accounts.graft.dev", name, "--type=merge",
            "-p", '{"spec":{"displayName":"Renamed"}}',
        )  # fmt: skip
        dump(cluster.get("accounts.graft.dev", name), "generation-behind")
    finally:
        operator.start()
    wait_for("the new User bound", lambda: ready(cluster, "users.graft.dev", "newbie", name), 60)
    wait_for(
        "the new Account Ready",
        lambda: ready(cluster, "accounts.graft.dev", f"{name}-new"),
        120,
    )
    cluster.kubectl("delete", "accounts.graft.dev", f"{name}-new", "--wait=false")


def user_obj(name: str, account: str, role: str) -> dict[str, Any]:
    spec = {"email": f"{name}@example.com", "role": role}
    return obj("User", name, account, spec)


def if_reason(found: dict[str, Any] | None, reason: str) -> dict[str, Any] | None:
    return found if (condition(found, "Ready") or {}).get("reason") == reason else None


# --- Deployments: flags, variables and images a tenant may not choose ------------------------------


def test_managed_flags_and_gpu_variables_are_refused_at_admission(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = operator.cluster
    for spec, said in (
        ({"engineArgs": ["--max_lora_rank=512"]}, "engineArgs may not set a flag Graft manages"),
        ({"env": [{"name": "CUDA_VISIBLE_DEVICES", "value": "0,1"}]}, "env may not set"),
        # Bad specs are refused where CEL can say it, not retried forever by the operator.
        ({"resources": {"cpu": "abc"}}, "resources.cpu must be a Kubernetes quantity"),
        ({"resources": {"memory": "lots"}}, "resources.memory must be a Kubernetes quantity"),
        ({"resources": {"gpus": 1, "gpuResource": "gpu"}}, "spec.resources.gpuResource"),
    ):
        body = obj("Deployment", "evil", namespace, {"baseModel": "base", **spec})
        refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
        assert refused.returncode != 0
        assert said in refused.stderr, refused.stderr


def test_claim_names_and_public_model_sources_are_checked_at_admission(
    crds: Cluster, namespace: str
) -> None:
    """A pvc:// URI names a claim in the object's own namespace: it must be a claim name, and a
    public model (deployed by other accounts, in their namespaces) cannot be on one. A public
    model's weights cannot be swapped under the accounts that serve it."""

    def apply(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return crds.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)

    def model(name: str, uri: str, **spec: Any) -> dict[str, Any]:
        return obj("Model", name, namespace, {"kind": "Base", "source": {"uri": uri}, **spec})

    for uri in ("pvc://Weights/m", "pvc://a_b/m", "pvc:///m", "pvc://-x/m"):
        refused = apply(model("claim", uri))
        assert refused.returncode != 0, uri
        assert "spec.source.uri" in refused.stderr, refused.stderr
    dataset = obj("Dataset", "d", namespace, {"source": {"uri": "pvc://UPPER/train.jsonl"}})
    assert apply(dataset).returncode != 0
    assert apply(model("claim", "pvc://weights.v1/models/m")).returncode == 0

    refused = apply(model("shared", "pvc://weights/m", public=True))
    assert refused.returncode != 0
    assert "a public model cannot be on a pvc:// claim" in refused.stderr
    assert apply(model("shared", "hf://org/m", public=True)).returncode == 0
    refused = apply(model("shared", "hf://org/other", public=True))
    assert refused.returncode != 0
    assert "the source of a public model cannot change" in refused.stderr
    # A private model's source may change (its own account is the only user).
    assert apply(model("claim", "pvc://weights/models/m2")).returncode == 0


def test_an_image_outside_the_allowed_list_is_never_run(
    operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster = operator.cluster
    base = tmp_path / "base"
    base.mkdir()
    cluster.apply(
        [
            obj("Model", "base", namespace, {"kind": "Base", "source": {"uri": f"file://{base}"}}),
            obj(
                "Deployment",
                "miner",
                namespace,
                {"baseModel": "base", "engine": "Reference", "image": "evil.example.com/x:1"},
            ),
        ]
    )

    def refused() -> dict[str, Any] | None:
        dep = cluster.get("deployments.graft.dev", "miner", namespace)
        return dep if (condition(dep, "Ready") or {}).get("reason") == "ImageNotAllowed" else None

    wait_for("ImageNotAllowed", refused, 60)
    assert cluster.list("pods", namespace, "graft.dev/deployment=miner") == []


# --- One operator at a time --------------------------------------------------------------------


def test_a_second_operator_waits_for_the_lease_then_takes_over(
    operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster = operator.cluster
    second = OperatorProcess(
        cluster,
        tmp_path / "second.log",
        env=dict(operator.extra_env),
        kubeconfig=operator.kubeconfig,
    )
    second.start()  # its liveness endpoint answers while it waits
    try:
        wait_for(
            "the second operator to wait", lambda: "waiting for leadership" in second.tail(), 30
        )
        base = tmp_path / "base"
        base.mkdir()
        cluster.apply(
            [
                obj(
                    "Model",
                    "base",
                    namespace,
                    {"kind": "Base", "source": {"uri": f"file://{base}"}},
                ),
                obj("Deployment", "two", namespace, {"baseModel": "base", "replicas": 2}),
            ]
        )

        def pods() -> list[dict[str, Any]]:
            return [
                p
                for p in cluster.list("pods", namespace, "graft.dev/deployment=two")
                if not p["metadata"].get("deletionTimestamp")
            ]

        wait_for("two pods", lambda: len(pods()) == 2, 60)
        time.sleep(6)  # several resyncs of the leader; the follower must have done nothing
        assert len(pods()) == 2
        assert "created pod" not in second.tail(400)

        operator.stop()  # a clean stop releases the Lease: no waiting out its 15 s
        started = time.monotonic()
        wait_for(
            "the second operator to lead", lambda: "leading: holding lease" in second.tail(), 30
        )
        took = time.monotonic() - started
        cluster.kubectl("scale", "deployments.graft.dev/two", "-n", namespace, "--replicas=3")
        wait_for("three pods, made by the new leader", lambda: len(pods()) == 3, 60)
        print(f"\nhand-over after a clean stop: {took:.1f} s")
    finally:
        second.stop()
        operator.start()


# --- Rollouts under an exact quota --------------------------------------------------------------


class ConditionWatch:
    """Records `{type: "<status>/<reason>"}` of every version of one Graft object (a watch)."""

    def __init__(
        self, cluster: Cluster, namespace: str, plural: str, name: str, into: list[dict[str, str]]
    ) -> None:
        from kubernetes import client, config, watch

        api = client.CustomObjectsApi(config.new_client_from_config(cluster.kubeconfig))
        self._watch = watch.Watch()
        stream = self._watch.stream(
            api.list_namespaced_custom_object,
            "graft.dev",
            "v1alpha1",
            namespace,
            plural,
            field_selector=f"metadata.name={name}",
            timeout_seconds=300,
        )

        def follow() -> None:
            for event in stream:
                conditions = (event["object"].get("status") or {}).get("conditions") or []
                into.append({c["type"]: f"{c['status']}/{c.get('reason')}" for c in conditions})

        self._thread = threading.Thread(target=follow, daemon=True)
        self._thread.start()
        time.sleep(0.5)  # the watch is established before the change it must see

    def stop(self) -> None:
        self._watch.stop()


def test_a_rollout_under_an_exact_gpu_quota_completes_and_stays_ready(
    operator: OperatorProcess, accounts: Callable[..., str], tmp_path: Path
) -> None:
    cluster = operator.cluster
    name = accounts("gpu", quota={"gpus": 2})
    base = tmp_path / "base"
    base.mkdir()
    spec = {
        "baseModel": "base",
        "engine": "Reference",
        "replicas": 2,
        "resources": {"gpus": 1},
    }
    cluster.apply(
        [
            obj("Model", "base", name, {"kind": "Base", "source": {"uri": f"file://{base}"}}),
            obj("Deployment", "chat", name, spec),
        ]
    )
    wait_for("Deployment Ready", lambda: ready(cluster, "deployments.graft.dev", "chat", name), 90)

    def pods() -> list[dict[str, Any]]:
        return cluster.list("pods", name, "graft.dev/deployment=chat")

    before = {p["metadata"]["labels"]["graft.dev/spec-hash"] for p in pods()}
    assert len(before) == 1
    # Every status the operator writes, from a watch: the rollout can be over in a second,
    # between two polls.
    statuses: list[dict[str, str]] = []
    follower = ConditionWatch(cluster, name, "deployments", "chat", statuses)
    try:
        # A template change: the surge pod is refused by the quota (2 GPUs, both in use).
        cluster.apply(obj("Deployment", "chat", name, {**spec, "engineArgs": ["--dtype=float32"]}))

        def rolled() -> bool:
            dep = cluster.get("deployments.graft.dev", "chat", name)
            live = [p for p in pods() if not p["metadata"].get("deletionTimestamp")]
            hashes = {p["metadata"]["labels"]["graft.dev/spec-hash"] for p in live}
            return (
                len(live) == 2
                and not hashes & before
                and (condition(dep, "Ready") or {}).get("status") == "True"
            )

        wait_for("the rollout to complete under the quota", rolled, timeout=120, interval=0.5)
        time.sleep(1)  # the watch's last events
    finally:
        follower.stop()
    progressing = [s.get("Progressing", "") for s in statuses]
    assert "True/SurgeRefused" in progressing, progressing
    # One pod at a time was away: with 2 replicas and maxUnavailable forced to 1, one always
    # served, and Ready said so in every status written during the rollout.
    assert all(s.get("Ready", "").startswith("True/") for s in statuses), statuses
    assert progressing[-1] == "False/Stable", statuses


def test_an_operator_namespace_that_does_not_exist_is_a_clear_error(
    operator: OperatorProcess, tmp_path: Path
) -> None:
    wrong = OperatorProcess(
        operator.cluster,
        tmp_path / "wrong.log",
        env={"GRAFT_OPERATOR_NAMESPACE": "no-such-namespace"},
        kubeconfig=operator.kubeconfig,
    )
    # Its standby may answer the liveness probe for a moment, or it may be gone already.
    with contextlib.suppress(AssertionError):
        wrong.start()
    assert wrong.proc is not None
    assert wrong.proc.wait(timeout=30) == 2
    # As its ServiceAccount it may not even look there (its Role is bound in graft-system).
    assert "may not read its Lease in namespace 'no-such-namespace'" in wrong.tail()
