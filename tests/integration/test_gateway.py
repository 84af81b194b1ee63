"""The gateway end to end: the official `openai` client → `graft gateway` (watch cache on the
real API server) → real `graft serve` processes on the pods' IPs (tests/harness/podservers.py),
with API keys issued by the operator from ApiKey objects, and the operator's autoscaler reading
the gateway's metrics and writing /scale.

Two accounts: `a` runs a private base model with an addon loaded into its Deployment; `b`
publishes a public base model, serves it, and has a private addon on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from harness.dump import dump
from harness.kube import Cluster, GatewayProcess, OperatorProcess, condition, wait_for
from harness.kubelet import KubeletStandIn
from harness.podservers import PodServers

pytestmark = pytest.mark.dataplane

GROUP = "graft.dev/v1alpha1"


def obj(kind: str, name: str, ns: str | None, spec: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    return {"apiVersion": GROUP, "kind": kind, "metadata": meta, "spec": spec}


def ready(cluster: Cluster, kind: str, name: str, ns: str | None = None) -> dict[str, Any] | None:
    found = cluster.get(kind, name, ns)
    c = condition(found, "Ready")
    return found if c and c["status"] == "True" else None


def api_key_of(cluster: Cluster, ns: str, name: str) -> str:
    """The plaintext key from the Secret the operator wrote for the ApiKey."""
    key = wait_for(
        f"ApiKey {ns}/{name} Ready", lambda: ready(cluster, "apikeys.graft.dev", name, ns), 60
    )
    secret = cluster.get("secret", key["status"]["secretName"], ns)
    assert secret is not None
    return base64.b64decode(secret["data"]["apiKey"]).decode()


@dataclass
class World:
    cluster: Cluster
    gateway: GatewayProcess
    a: str
    b: str
    key_a: str
    key_b: str

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0, timeout=120
        )


def chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 8)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], **kw
    )


@pytest.fixture(scope="module")
def world(
    operator: OperatorProcess,
    gateway: GatewayProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    from graft.dataplane.smallmodels import build_tiny_model
    from harness.tinyadapters import random_adapter

    cluster = operator.cluster
    root = tmp_path_factory.mktemp("gateway-world")
    base = build_tiny_model(root / "base")
    sql = random_adapter(base, root / "sql", rank=8, seed=1)
    secret = random_adapter(base, root / "secret", rank=8, seed=2)
    suffix = uuid.uuid4().hex[:6]
    a, b = f"gw-a-{suffix}", f"gw-b-{suffix}"
    for account in (a, b):
        cluster.apply(obj("Account", account, None, {}))
    for account in (a, b):
        wait_for(
            f"Account {account}", lambda n=account: ready(cluster, "accounts.graft.dev", n), 90
        )
    with ExitStack() as stack:
        servers = []
        for ns in (a, b):
            (root / ns).mkdir()
            servers.append(
                stack.enter_context(
                    PodServers(cluster, ns, "app.kubernetes.io/component=model-server", root / ns)
                )
            )
            kubelet = KubeletStandIn(cluster.kubeconfig, ns, root / f"kubelet-{ns}").start()
            stack.callback(kubelet.stop)
        addons = {"enableAddons": True, "maxAddons": 2, "maxAddonRank": 16}
        cluster.apply(
            [
                obj("User", "alice", a, {"email": f"alice@{a}.example.com", "role": "member"}),
                obj("User", "bob", b, {"email": f"bob@{b}.example.com", "role": "member"}),
                obj("ApiKey", "alice-key", a, {"user": "alice"}),
                obj("ApiKey", "bob-key", b, {"user": "bob"}),
                obj("Model", "base", a, {"kind": "Base", "source": {"uri": f"file://{base}"}}),
                obj(
                    "Model",
                    "sql",
                    a,
                    {"kind": "PeftAddon", "baseModel": "base", "source": {"uri": f"file://{sql}"}},
                ),
                obj(
                    "Model",
                    "pub",
                    b,
                    {"kind": "Base", "public": True, "source": {"uri": f"file://{base}"}},
                ),
                obj(
                    "Model",
                    "secret",
                    b,
                    {
                        "kind": "PeftAddon",
                        "baseModel": "pub",
                        "source": {"uri": f"file://{secret}"},
                    },
                ),
                obj(
                    "Deployment",
                    "chat",
                    a,
                    {"baseModel": "base", "replicas": 1, "engine": "Reference", **addons},
                ),
                obj(
                    "Deployment",
                    "pubdep",
                    b,
                    {"baseModel": "pub", "replicas": 1, "engine": "Reference", **addons},
                ),
                obj("DeployedModel", "sql-live", a, {"model": "sql", "deployment": "chat"}),
                obj("DeployedModel", "secret-live", b, {"model": "secret", "deployment": "pubdep"}),
            ]
        )
        for ns, name in ((a, "sql-live"), (b, "secret-live")):
            wait_for(
                f"DeployedModel {ns}/{name} Ready",
                lambda ns=ns, name=name: ready(cluster, "deployedmodels.graft.dev", name, ns),
                240,
            )
        assert not [e for s in servers for e in s.errors]
        w = World(
            cluster,
            gateway,
            a,
            b,
            api_key_of(cluster, a, "alice-key"),
            api_key_of(cluster, b, "bob-key"),
        )
        yield w
        for account in (a, b):
            cluster.kubectl(
                "patch", "accounts.graft.dev", account, "--type=merge",
                "-p", '{"spec":{"deletionPolicy":"Delete"}}', check=False,
            )  # fmt: skip
            cluster.kubectl("delete", "accounts.graft.dev", account, "--wait=false", check=False)


def eventually(what: str, probe: Any, timeout: float = 30.0) -> Any:
    return wait_for(what, probe, timeout)


def test_an_account_lists_and_calls_its_own_models_and_public_ones_only(world: World) -> None:
    a, b = world.a, world.b
    client = world.client(world.key_a)
    ids = {m.id for m in client.models.list()}
    assert {
        f"accounts/{a}/models/base",
        f"accounts/{a}/models/sql",
        f"accounts/{a}/deployedmodels/sql-live",
        f"accounts/{b}/models/pub",
    } <= ids
    assert not {i for i in ids if i.startswith(f"accounts/{b}/") and not i.endswith("/pub")}

    answer = chat(client, f"accounts/{a}/models/sql")
    assert answer.choices[0].message.content is not None
    assert answer.model == f"accounts/{a}/models/sql"  # the replica's own answer, passed on
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert chat(client, f"accounts/{a}/deployedmodels/sql-live").choices

    # b's public base model, served by b's replicas to a's key.
    assert chat(client, f"accounts/{b}/models/pub").model == f"accounts/{b}/models/pub"
    # b's private addon: refused, and never sent to a replica.
    with pytest.raises(openai.PermissionDeniedError):
        chat(client, f"accounts/{b}/models/secret")
    with pytest.raises(openai.PermissionDeniedError):
        chat(client, f"accounts/{b}/deployedmodels/secret-live")
    with pytest.raises(openai.NotFoundError):
        chat(client, f"accounts/{a}/models/not-there")
    # b itself can call it.
    assert chat(world.client(world.key_b), f"accounts/{b}/models/secret").choices


def test_streaming_through_the_gateway(world: World) -> None:
    stream = chat(
        world.client(world.key_a),
        f"accounts/{world.a}/models/sql",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1
    assert usage[0].completion_tokens > 0  # the tiny model may stop early, at EOS
    # Chunks, not one answer: the role, the text as it came, the finish reason.
    assert len([c for c in chunks if c.choices]) >= 2


def test_bad_and_revoked_keys_get_401_within_seconds(world: World) -> None:
    cluster, a = world.cluster, world.a
    with pytest.raises(openai.AuthenticationError):
        chat(world.client("graft_0000000000000000_" + "0" * 64), f"accounts/{a}/models/base")
    cluster.apply(obj("ApiKey", "short-lived", a, {"user": "alice"}))
    key = api_key_of(cluster, a, "short-lived")
    client = world.client(key)
    eventually("the new key works", lambda: _works(client, f"accounts/{a}/models/base"))
    cluster.kubectl("delete", "apikeys.graft.dev", "short-lived", "-n", a, "--wait=false")
    started = time.monotonic()
    eventually(
        "the deleted key is refused", lambda: _refused(client, f"accounts/{a}/models/base"), 10
    )
    print(f"revoked in {time.monotonic() - started:.2f}s")


def test_an_in_cluster_service_account_token_acts_for_its_account(world: World) -> None:
    """A ServiceAccount of the account's namespace that may read its Models calls them with its
    own token (TokenReview + SubjectAccessReview by the gateway); one without that right, or of
    another namespace, cannot."""
    cluster, a, b = world.cluster, world.a, world.b
    cluster.kubectl("create", "serviceaccount", "app", "-n", a)
    cluster.kubectl("create", "serviceaccount", "idle", "-n", a)
    cluster.kubectl(
        "create", "role", "read-models", "-n", a,
        "--verb=get,list", "--resource=models.graft.dev",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "app-reads-models", "-n", a,
        "--role=read-models", f"--serviceaccount={a}:app",
    )  # fmt: skip
    token = cluster.kubectl("create", "token", "app", "-n", a, "--duration=10m").stdout.strip()
    idle = cluster.kubectl("create", "token", "idle", "-n", a, "--duration=10m").stdout.strip()
    model = f"accounts/{a}/models/base"
    answer = eventually("the app's token works", lambda: _works(world.client(token), model))
    assert answer
    with pytest.raises(openai.PermissionDeniedError):
        chat(world.client(token), f"accounts/{b}/models/secret")
    assert _refused(world.client(idle), model)
    assert _refused(world.client("not-a-token-at-all"), model)


def test_the_account_limit_answers_429_with_retry_after(world: World) -> None:
    cluster, a = world.cluster, world.a
    patch = json.dumps({"spec": {"limits": {"requestsPerMinute": 2}}})
    cluster.kubectl("patch", "accounts.graft.dev", a, "--type=merge", "-p", patch)
    try:
        client = world.client(world.key_a)
        model = f"accounts/{a}/models/base"

        def limited() -> Any:
            try:
                chat(client, model)
            except openai.RateLimitError as exc:
                return exc
            return None

        refused = eventually("a 429", limited, 30)
        assert int(refused.response.headers["Retry-After"]) >= 1
        # Another account is not limited by a's budget.
        assert chat(world.client(world.key_b), f"accounts/{world.b}/models/pub").choices
    finally:
        cluster.kubectl(
            "patch", "accounts.graft.dev", a, "--type=json",
            "-p", '[{"op":"remove","path":"/spec/limits"}]',
        )  # fmt: skip


def test_deleting_the_user_revokes_its_keys(world: World) -> None:
    cluster, b = world.cluster, world.b
    client = world.client(world.key_b)
    assert chat(client, f"accounts/{b}/models/pub").choices
    cluster.kubectl("delete", "users.graft.dev", "bob", "-n", b, "--wait=false")
    eventually("bob's key is refused", lambda: _refused(client, f"accounts/{b}/models/pub"), 10)


def _works(client: openai.OpenAI, model: str) -> bool:
    try:
        return bool(chat(client, model).choices)
    except openai.AuthenticationError:
        return False


def _refused(client: openai.OpenAI, model: str) -> bool:
    try:
        chat(client, model)
    except openai.AuthenticationError:
        return True
    return False


# --- autoscaling --------------------------------------------------------------------------------


def replicas_of(cluster: Cluster, ns: str, name: str) -> int:
    found = cluster.get("deployments.graft.dev", name, ns)
    assert found is not None
    return int(found["spec"].get("replicas", 0))


def test_scale_to_zero_from_zero_up_under_a_burst_and_down_again(world: World) -> None:
    """One Deployment with autoscaling (its own base model, so nothing else serves it): idle,
    it goes to zero after its window; a request brings one replica back and is answered; a
    burst of concurrent requests adds the second; quiet, it goes down to one, then to zero."""
    cluster, a = world.cluster, world.a
    base = cluster.get("models.graft.dev", "base", a)
    assert base is not None
    cluster.apply(obj("Model", "solo", a, {"kind": "Base", "source": base["spec"]["source"]}))
    autoscaling = {
        "minReplicas": 0,
        "maxReplicas": 2,
        "target": {"concurrentRequests": 1},
        "scaleUpWindow": "2s",
        "scaleDownWindow": "5s",
        "scaleToZeroWindow": "8s",
    }
    cluster.apply(
        obj(
            "Deployment",
            "auto",
            a,
            {"baseModel": "solo", "engine": "Reference", "autoscaling": autoscaling},
        )
    )
    model = f"accounts/{a}/models/solo"
    # The /scale subresource an HPA or KEDA would use: replicas and the pods' label selector.
    scale = eventually(
        "auto's /scale with a selector",
        lambda: _scale_with_selector(cluster, a, "auto"),
        60,
    )
    pods = cluster.list("pods", a, scale["status"]["selector"])
    assert pods
    assert {p["metadata"]["labels"]["graft.dev/deployment"] for p in pods} == {"auto"}
    eventually(
        "auto scaled to zero after its window",
        lambda: replicas_of(cluster, a, "auto") == 0 and not _pods(cluster, a, "auto"),
        120,
    )
    auto = cluster.get("deployments.graft.dev", "auto", a)
    assert auto is not None
    assert auto["status"]["autoscaling"]["reason"] == "ScaledToZero", auto["status"]
    dump(auto, "autoscaled-to-zero")

    client = world.client(world.key_a)
    started = time.monotonic()
    answer = chat(client, model)  # held by the gateway while a replica starts
    cold = time.monotonic() - started
    assert answer.model == model
    assert replicas_of(cluster, a, "auto") >= 1
    print(f"request answered {cold:.1f}s after arriving at a Deployment scaled to zero")

    stop = threading.Event()
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set():
            try:
                chat(client, model, max_tokens=32)
            except openai.OpenAIError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        eventually(
            "a second replica under the burst", lambda: replicas_of(cluster, a, "auto") == 2, 60
        )
        dump(cluster.get("deployments.graft.dev", "auto", a), "autoscaled-up")
    finally:
        stop.set()
        for t in threads:
            t.join(130)
    assert not errors, errors[:3]
    eventually("down to one replica", lambda: replicas_of(cluster, a, "auto") == 1, 60)
    eventually("down to zero again", lambda: replicas_of(cluster, a, "auto") == 0, 60)


def _scale_with_selector(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    raw = cluster.kubectl(
        "get", "--raw", f"/apis/graft.dev/v1alpha1/namespaces/{ns}/deployments/{name}/scale"
    ).stdout
    scale: dict[str, Any] = json.loads(raw)
    assert scale["kind"] == "Scale"
    return scale if (scale.get("status") or {}).get("selector") else None


def _pods(cluster: Cluster, ns: str, dep: str) -> list[dict[str, Any]]:
    return [
        p
        for p in cluster.list("pods", ns, f"graft.dev/deployment={dep}")
        if not p["metadata"].get("deletionTimestamp")
    ]


# --- dataset uploads ------------------------------------------------------------------------


def _chat_jsonl(at_least: int) -> bytes:
    """Valid chat JSONL of at least `at_least` bytes (one example a line)."""
    lines = []
    size = 0
    i = 0
    while size < at_least:
        line = json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i + 1}? Answer briefly."},
                    {"role": "assistant", "content": f"{2 * i + 1}"},
                ]
            }
        )
        lines.append(line)
        size += len(line) + 1
        i += 1
    return ("\n".join(lines) + "\n").encode()


def test_a_member_uploads_a_20_mb_dataset_that_validates(world: World) -> None:
    cluster, a = world.cluster, world.a
    data = _chat_jsonl(20_000_000)
    sha = hashlib.sha256(data).hexdigest()
    body = {"fileName": "big-chat.jsonl", "size": len(data), "sha256": sha}
    uploads = f"{world.gateway.url}/v1/accounts/{a}/uploads"
    # Keys of their own: bob's (world.key_b) is revoked by an earlier test. Carol is a member of
    # the other account, Vic a viewer of this one.
    cluster.apply(
        [
            obj(
                "User",
                "carol",
                world.b,
                {"email": f"carol@{world.b}.example.com", "role": "member"},
            ),
            obj("ApiKey", "carol-key", world.b, {"user": "carol"}),
            obj("User", "vic", a, {"email": f"vic@{a}.example.com", "role": "viewer"}),
            obj("ApiKey", "vic-key", a, {"user": "vic"}),
        ]
    )
    foreign = {"Authorization": f"Bearer {api_key_of(cluster, world.b, 'carol-key')}"}
    viewer = {"Authorization": f"Bearer {api_key_of(cluster, a, 'vic-key')}"}
    with httpx.Client(timeout=120) as http:
        # Another account's key may not upload into this account, nor read its uploads; nor
        # may a viewer of this one. (401 until the gateway's watch cache has the new keys.)
        def known(headers: dict[str, str]) -> httpx.Response | None:
            answer = http.post(uploads, json=body, headers=headers)
            return None if answer.status_code == 401 else answer

        for who in (foreign, viewer):
            refused = eventually("the gateway to know the new key", lambda w=who: known(w))
            assert refused.status_code == 403, refused.text
        member = {"Authorization": f"Bearer {world.key_a}"}
        created = http.post(uploads, json=body, headers=member)
        assert created.status_code == 200, created.text
        up = created.json()
        assert not up["complete"]
        assert http.get(f"{uploads}/{up['id']}", headers=foreign).status_code == 403
        offset, chunk = up["offset"], 8 * 1024 * 1024
        while offset < len(data):
            r = http.put(
                f"{uploads}/{up['id']}",
                content=data[offset : offset + chunk],
                headers={**member, "Upload-Offset": str(offset)},
            )
            assert r.status_code == 200, r.text
            offset = r.json()["offset"]
        assert r.json()["complete"] is True
        uri = r.json()["uri"]
    assert uri.startswith("file://")
    assert uri.endswith(f"/{a}/datasets/{sha}/big-chat.jsonl")
    cluster.apply(obj("Dataset", "uploaded", a, {"source": {"uri": uri}}))
    # The kubelet stand-in of the world's account runs the validation Job for real.
    found = wait_for(
        "the uploaded Dataset Ready",
        lambda: ready(cluster, "datasets.graft.dev", "uploaded", a),
        300,
    )
    assert found["status"]["sha256"] == sha
    assert found["status"]["sizeBytes"] == len(data)
