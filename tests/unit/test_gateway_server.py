"""The gateway's HTTP server with the official `openai` client in front and stub replicas behind
(real HTTP on loopback, see harness/replicas.py). The cluster is a StaticView the tests fill in;
the same server runs against the watch cache in tests/integration/test_gateway.py."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from graft.gateway import apikeys
from graft.gateway.catalog import Catalog, build
from graft.gateway.server import Pod, Settings
from harness.replicas import Loop, RunningGateway, StaticView, StubReplica, api_key_object, meta

BASE = "accounts/a/models/base"
ADDON = "accounts/a/models/addon"
PUBLIC = "accounts/b/models/pub"
SECRET_ADDON = "accounts/b/models/secret-addon"


class World:
    """Accounts a and b, a key for each; a serves base+addon on deployment `chat` (replicas r1,
    r2); b publishes `pub` on `pubdep` (replica r3) and has a private addon on it."""

    def __init__(self, loop: Loop, settings: Settings, limits: dict[str, Any] | None = None):
        self.loop = loop
        self.key_a, self.key_b = apikeys.generate(), apikeys.generate()
        self.r1 = StubReplica("r1", {BASE, ADDON}, "key-chat")
        self.r2 = StubReplica("r2", {BASE}, "key-chat")
        self.r3 = StubReplica("r3", {PUBLIC, SECRET_ADDON}, "key-pub")
        self.replicas = [self.r1, self.r2, self.r3]
        for r in self.replicas:
            loop.run(r.start())
        self.limits = limits or {}
        self.deployments: list[dict[str, Any]] = [
            {"metadata": meta("chat", "a"), "spec": {"baseModel": "base", "replicas": 2}},
            {"metadata": meta("pubdep", "b"), "spec": {"baseModel": "pub", "replicas": 1}},
        ]
        self.pods = [
            self.pod("r1", "a", "chat", self.r1),
            self.pod("r2", "a", "chat", self.r2),
            self.pod("r3", "b", "pubdep", self.r3),
        ]
        self.view = StaticView(
            self.catalog(), self.pods, {"a/chat": "key-chat", "b/pubdep": "key-pub"}
        )
        self.gw = RunningGateway(loop, self.view, settings)
        loop.run(self.gw.start())

    @staticmethod
    def pod(uid: str, ns: str, dep: str, r: StubReplica, ready: bool = True) -> Pod:
        return Pod(uid, uid, f"accounts/{ns}/deployments/{dep}", "127.0.0.1", r.port, ready)

    def catalog(self) -> Catalog:
        return build(
            accounts=[{"metadata": meta("a"), "spec": {"limits": self.limits}}],
            users=[
                {"metadata": meta("alice", "a"), "spec": {}},
                {"metadata": meta("bob", "b"), "spec": {}},
            ],
            api_keys=[
                api_key_object("a", "alice", self.key_a),
                api_key_object("b", "bob", self.key_b),
            ],
            models=[
                {"metadata": meta("base", "a"), "spec": {"kind": "Base"}},
                {"metadata": meta("addon", "a"), "spec": {"kind": "PeftAddon"}},
                {"metadata": meta("pub", "b"), "spec": {"kind": "Base", "public": True}},
                {"metadata": meta("secret-addon", "b"), "spec": {"kind": "PeftAddon"}},
            ],
            deployments=self.deployments,
            deployed_models=[
                {"metadata": meta("tuned", "a"), "spec": {"model": "addon", "deployment": "chat"}},
                {
                    "metadata": meta("secret", "b"),
                    "spec": {"model": "secret-addon", "deployment": "pubdep"},
                },
            ],
        )

    def refresh(self) -> None:
        self.view.cat = self.catalog()
        self.view.pod_list = list(self.pods)
        self.view.changed()

    def client(self, key: apikeys.NewKey | str) -> openai.OpenAI:
        token = key if isinstance(key, str) else key.key
        return openai.OpenAI(base_url=f"{self.gw.url}/v1", api_key=token, max_retries=0, timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.gw.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def close(self) -> None:
        self.loop.run(self.gw.stop())
        for r in self.replicas:
            self.loop.run(r.stop())


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def world(loop: Loop) -> Iterator[World]:
    w = World(loop, Settings(queue_timeout=2.0, probe_interval=0.2))
    yield w
    w.close()


def chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **kw
    )


def test_models_lists_own_and_public_models_only(world: World) -> None:
    ids = {m.id for m in world.client(world.key_a).models.list()}
    assert ids == {BASE, ADDON, "accounts/a/deployedmodels/tuned", PUBLIC}
    ids_b = {m.id for m in world.client(world.key_b).models.list()}
    assert ids_b == {PUBLIC, SECRET_ADDON, "accounts/b/deployedmodels/secret"}


def test_a_chat_goes_to_a_replica_that_serves_the_model_with_the_server_key(world: World) -> None:
    answer = chat(world.client(world.key_a), ADDON)
    assert answer.choices[0].message.content == f"r1 serves {ADDON}"  # only r1 lists the addon
    assert world.r1.headers[-1]["Authorization"] == "Bearer key-chat"
    assert answer.usage is not None
    assert answer.usage.total_tokens == 8
    # A DeployedModel's name is sent to the replica as the addon's name, which it serves.
    by_dm = chat(world.client(world.key_a), "accounts/a/deployedmodels/tuned")
    assert by_dm.choices[0].message.content == f"r1 serves {ADDON}"
    # The bare ID of an own model works too.
    assert chat(world.client(world.key_a), "base").choices[0].message.content.endswith(BASE)
    text = world.client(world.key_a).completions.create(model=BASE, prompt="hi")
    assert text.choices[0].text.endswith(f"serves {BASE}")


def test_bad_keys_are_401(world: World) -> None:
    last = world.key_a.key[-1]
    wrong_secret = world.key_a.key[:-1] + ("1" if last == "0" else "0")
    for key in ("sk-not-graft", apikeys.generate().key, wrong_secret):
        with pytest.raises(openai.AuthenticationError) as exc:
            chat(world.client(key), BASE)
        assert "Bearer" not in str(exc.value.body)
        assert world.key_a.key not in str(exc.value.body)
    response = httpx.post(f"{world.gw.url}/v1/chat/completions", json={"model": BASE})
    assert response.status_code == 401


def test_a_token_the_cluster_vouches_for_acts_for_its_account(world: World) -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl"  # a JWT's shape
    world.view.tokens[token] = "a"
    assert chat(world.client(token), BASE).choices[0].message.content.endswith(BASE)
    with pytest.raises(openai.PermissionDeniedError):
        chat(world.client(token), SECRET_ADDON)
    with pytest.raises(openai.AuthenticationError):
        chat(world.client("eyJh.eyJz.bm90LWtub3du"), BASE)
    # Not a JWT: never sent for review (no TokenReview for garbage).
    world.view.tokens["sa-token-of-a"] = "a"
    with pytest.raises(openai.AuthenticationError):
        chat(world.client("sa-token-of-a"), BASE)


def test_a_revoked_key_is_refused_at_the_next_request(world: World) -> None:
    client = world.client(world.key_a)
    chat(client, BASE)
    world.view.cat = build(api_keys=[], models=[], deployments=[])  # the ApiKey is gone
    with pytest.raises(openai.AuthenticationError):
        chat(client, BASE)


def test_another_accounts_private_addon_is_403_unknown_is_404_public_works(world: World) -> None:
    client = world.client(world.key_a)
    with pytest.raises(openai.PermissionDeniedError):
        chat(client, SECRET_ADDON)
    with pytest.raises(openai.PermissionDeniedError):
        chat(client, "accounts/b/deployedmodels/secret")
    with pytest.raises(openai.NotFoundError):
        chat(client, "accounts/a/models/nothing")
    assert world.r3.received == []
    # Names that resolve to nothing never become metric labels (one series per name otherwise).
    assert "nothing" not in world.metrics()
    assert 'graft_gateway_requests_total{account="a",code="404",model="-"} 1.0' in world.metrics()
    answer = chat(client, PUBLIC)
    assert answer.choices[0].message.content == f"r3 serves {PUBLIC}"


def test_streaming_passes_each_chunk_on_as_it_comes(world: World, loop: Loop) -> None:
    hold = loop.run(_event())
    world.r1.hold = hold  # the replica sends one chunk, then waits until the test saw it
    world.r2.hold = hold
    stream = chat(world.client(world.key_a), BASE, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.content is not None
    assert "[0]" in first.choices[0].delta.content
    loop.loop.call_soon_threadsafe(hold.set)
    rest = list(stream)
    text = first.choices[0].delta.content + "".join(
        c.choices[0].delta.content or "" for c in rest if c.choices
    )
    assert "[2]" in text
    # The client did not ask for usage: the chunk the gateway asked for is not passed on...
    assert all(c.usage is None for c in rest)
    # ...but it was counted.
    assert (
        'graft_gateway_tokens_total{account="a",direction="out",model="accounts/a/models/base"} 3.0'
        in world.metrics()
    )


def test_streaming_with_usage_asked_for_passes_the_usage_chunk(world: World) -> None:
    stream = chat(
        world.client(world.key_a), BASE, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in stream if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == 3


def test_a_client_that_goes_away_cancels_the_request_upstream(world: World, loop: Loop) -> None:
    hold = loop.run(_event())  # never set: the replica would wait forever
    world.r1.hold = hold
    world.r2.hold = hold
    with httpx.stream(
        "POST",
        f"{world.gw.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.key_a.key}"},
        json={"model": BASE, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    ) as response:
        first = next(response.iter_bytes())
        assert b"[0]" in first
    deadline = time.monotonic() + 10
    while world.r1.cancelled + world.r2.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.r1.cancelled + world.r2.cancelled == 1


def test_requests_over_the_account_limit_get_429_with_retry_after(loop: Loop) -> None:
    w = World(loop, Settings(queue_timeout=2.0, probe_interval=0.2), {"requestsPerMinute": 2})
    try:
        client = w.client(w.key_a)
        chat(client, BASE)
        chat(client, BASE)
        with pytest.raises(openai.RateLimitError) as exc:
            chat(client, BASE)
        assert int(exc.value.response.headers["Retry-After"]) >= 1
        chat(w.client(w.key_b), PUBLIC)  # another account has its own budget
    finally:
        w.close()


def test_a_failure_before_the_first_byte_is_retried_on_another_replica(world: World) -> None:
    world.r1.behave = "503"
    answers = {chat(world.client(world.key_a), BASE).choices[0].message.content for _ in range(4)}
    assert answers == {f"r2 serves {BASE}"}
    world.r1.behave = "drop"
    assert chat(world.client(world.key_a), BASE).choices[0].message.content == f"r2 serves {BASE}"


def test_a_4xx_from_the_replica_is_the_answer_and_is_not_retried(world: World) -> None:
    world.r1.behave = world.r2.behave = "400"
    with pytest.raises(openai.BadRequestError) as exc:
        chat(world.client(world.key_a), BASE)
    assert "bad max_tokens" in str(exc.value)
    assert len(world.r1.received) + len(world.r2.received) == 1


def test_no_replica_serving_the_addon_is_503_with_retry_after_when_the_wait_ends(
    world: World,
) -> None:
    world.r1.models.discard(ADDON)
    world.refresh()
    prober = world.gw.gateway.prober
    assert prober is not None
    deadline = time.monotonic() + 10
    while any(ADDON in m for m in prober.models.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the prober's next round sees it
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        chat(world.client(world.key_a), ADDON)
    assert exc.value.status_code == 503
    assert time.monotonic() - started >= 1.5  # it waited for a replica (queue_timeout 2 s)
    assert int(exc.value.response.headers["Retry-After"]) >= 1


def test_the_least_busy_replica_gets_the_next_request(world: World, loop: Loop) -> None:
    hold = loop.run(_event())
    world.r1.hold = hold
    world.r2.hold = hold
    results: list[str] = []

    def slow() -> None:
        stream = chat(world.client(world.key_a), BASE, stream=True)
        results.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while not (world.r1.received or world.r2.received) and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = world.r1 if world.r1.received else world.r2
    idle = world.r2 if busy is world.r1 else world.r1
    busy.hold = idle.hold = None
    answer = chat(world.client(world.key_a), BASE)
    assert answer.choices[0].message.content == f"{idle.name} serves {BASE}"
    loop.loop.call_soon_threadsafe(hold.set)
    t.join(10)
    assert results


def test_admin_paths_of_the_model_server_are_not_reachable(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.key_a.key}"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/metrics"):
        response = httpx.post(f"{world.gw.url}{path}", headers=headers, json={"lora_name": "x"})
        assert response.status_code in (404, 405)
        assert "error" in response.json()
    assert all(not r.received for r in world.replicas)


def test_a_deployment_at_zero_is_asked_for_a_replica_and_the_request_waits_for_it(
    loop: Loop,
) -> None:
    w = World(loop, Settings(queue_timeout=10.0, probe_interval=0.2))
    try:
        w.deployments[0]["spec"] = {
            "baseModel": "base",
            "replicas": 0,
            "autoscaling": {"minReplicas": 0, "maxReplicas": 2},
        }
        w.pods = [p for p in w.pods if p.deployment != "accounts/a/deployments/chat"]
        w.refresh()

        def scale(dep: Any) -> bool:
            # What the operator and the kubelet do after the /scale write, a moment later.
            def come_up() -> None:
                time.sleep(1.0)
                w.deployments[0]["spec"]["replicas"] = 1
                w.pods.append(World.pod("r1", "a", "chat", w.r1))
                w.refresh()

            threading.Thread(target=come_up, daemon=True).start()
            return True

        w.view.on_scale = scale
        client = w.client(w.key_a)
        results: list[str] = []
        t = threading.Thread(
            target=lambda: results.append(chat(client, BASE).choices[0].message.content)
        )
        t.start()
        deadline = time.monotonic() + 5
        while not w.view.scaled and time.monotonic() < deadline:
            time.sleep(0.02)
        # While it waits, the request counts as load on the Deployment (what the autoscaler reads).
        assert 'graft_gateway_in_flight{deployment="chat",namespace="a"} 1.0' in w.metrics()
        t.join(15)
        assert results == [f"r1 serves {BASE}"]
        assert w.view.scaled == ["accounts/a/deployments/chat"]
        assert 'graft_gateway_in_flight{deployment="chat",namespace="a"} 0.0' in w.metrics()
        assert (
            'graft_gateway_deployment_requests_total{deployment="chat",namespace="a"} 1.0'
            in w.metrics()
        )
    finally:
        w.close()


def test_a_deployment_at_zero_without_autoscaling_is_503_at_once(world: World) -> None:
    world.deployments[0]["spec"]["replicas"] = 0
    world.pods = [p for p in world.pods if p.deployment != "accounts/a/deployments/chat"]
    world.refresh()
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        chat(world.client(world.key_a), BASE)
    assert "0 replicas and no autoscaling" in str(exc.value)
    assert time.monotonic() - started < 1.5
    assert world.view.scaled == []


def test_malformed_bodies_are_400(world: World) -> None:
    headers = {"Authorization": f"Bearer {world.key_a.key}"}
    url = f"{world.gw.url}/v1/chat/completions"
    assert httpx.post(url, headers=headers, content=b"{not json").status_code == 400
    assert httpx.post(url, headers=headers, json=[1, 2]).status_code == 400
    no_model = httpx.post(url, headers=headers, json={"messages": []})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"


async def _event() -> asyncio.Event:
    return asyncio.Event()
