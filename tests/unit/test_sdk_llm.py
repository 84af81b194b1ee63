"""The LLM's pure parts (what it applies) and its requests through an OpenAI-compatible server on
loopback (a stub replica standing in for the gateway): the `openai` package's own types come
back, with the model's full name sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.completion import Completion

from graft.sdk import LLM, ConfigError, Connection, SupervisedFineTuningJob
from graft.sdk.llm import ref_full_name
from harness.replicas import Loop, StubReplica

PUBLIC_BASE = "accounts/public/models/tiny"


def conn(gateway: str = "http://127.0.0.1:1", key: str = "k") -> Connection:
    return Connection("acme", gateway_url=gateway, api_key=key)


def test_an_on_demand_llm_needs_an_id() -> None:
    with pytest.raises(ConfigError, match="needs id="):
        LLM(PUBLIC_BASE, deployment_type="on-demand", connection=conn())
    with pytest.raises(ConfigError, match="deployment_type"):
        LLM(PUBLIC_BASE, id="x", deployment_type="serverless", connection=conn())  # type: ignore[arg-type]


def test_the_deployment_it_applies() -> None:
    llm = LLM(PUBLIC_BASE, id="My Deployment", connection=conn(), engine="Reference")
    assert llm.id == "my-deployment"
    assert llm.model_name == PUBLIC_BASE
    body = llm.deployment_body()
    assert body["metadata"]["name"] == "my-deployment"
    assert body["spec"] == {"baseModel": PUBLIC_BASE, "enableAddons": True, "engine": "Reference"}
    assert "replicas" not in body["spec"]  # /scale owns it unless asked
    assert (
        LLM(PUBLIC_BASE, id="d", connection=conn(), replicas=0).deployment_body()["spec"][
            "replicas"
        ]
        == 0
    )


def test_the_dashboard_urls_point_at_the_gateways_pages() -> None:
    gateway = "http://gw.example:8080/"
    llm = LLM(PUBLIC_BASE, id="chat", connection=conn(gateway))
    assert llm.deployment_url == "http://gw.example:8080/dashboard/accounts/acme/deployments/chat"
    named = LLM(PUBLIC_BASE, deployment_type="shared", deployment="pool", connection=conn(gateway))
    assert named.deployment_url.endswith("/dashboard/accounts/acme/deployments/pool")
    shared = LLM(PUBLIC_BASE, deployment_type="shared", connection=conn(gateway))
    with pytest.raises(ConfigError, match="apply"):
        _ = shared.deployment_url
    job = SupervisedFineTuningJob(name="tune", model=llm, dataset="train")
    with pytest.raises(ConfigError, match="sync"):
        _ = job.url
    job.id = "tune-1a2b"
    assert job.url == "http://gw.example:8080/dashboard/accounts/acme/fine-tuning-jobs/tune-1a2b"


def test_references() -> None:
    assert ref_full_name("tiny", "models", "acme") == "accounts/acme/models/tiny"
    assert ref_full_name(PUBLIC_BASE, "models", "acme") == PUBLIC_BASE
    assert ref_full_name("accounts/a/deployments/x", "models", "acme") == ""
    assert ref_full_name("Not An ID", "models", "acme") == ""


def test_a_job_of_an_llm_trains_on_its_base_and_keeps_its_hyperparameters() -> None:
    llm = LLM(PUBLIC_BASE, id="dep", connection=conn())
    job = SupervisedFineTuningJob(
        name="my job", model=llm, dataset="train", epochs=2, lora_rank=4, max_steps=3
    )
    assert job.base_model == PUBLIC_BASE
    assert job.account == "acme"
    assert job.hyperparameters == {"epochs": 2, "loraRank": 4, "maxSteps": 3}


@pytest.fixture
def replica() -> Iterator[StubReplica]:
    loop = Loop()
    stub = StubReplica("gateway", {PUBLIC_BASE}, key="graft_user_key")
    loop.run(stub.start())
    yield stub
    loop.run(stub.stop())
    loop.close()


def test_chat_and_completions_go_through_the_gateway_in_openai_types(
    replica: StubReplica,
) -> None:
    llm = LLM(
        PUBLIC_BASE,
        deployment_type="shared",
        connection=conn(f"http://127.0.0.1:{replica.port}", "graft_user_key"),
    )
    chat = llm.chat.completions.create(messages=[{"role": "user", "content": "hi"}])
    assert isinstance(chat, ChatCompletion)
    assert chat.choices[0].message.content == f"gateway serves {PUBLIC_BASE}"
    completion = llm.completions.create(prompt="hi", max_tokens=3)
    assert isinstance(completion, Completion)
    assert replica.received[0]["model"] == PUBLIC_BASE
    assert replica.headers[0]["Authorization"] == "Bearer graft_user_key"
    chunks = list(
        llm.chat.completions.create(messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("gateway serves")


def test_a_wrong_key_is_the_openai_packages_own_error(replica: StubReplica) -> None:
    llm = LLM(
        PUBLIC_BASE,
        deployment_type="shared",
        connection=conn(f"http://127.0.0.1:{replica.port}", "graft_wrong"),
    )
    with pytest.raises(openai.AuthenticationError):
        llm.chat.completions.create(messages=[{"role": "user", "content": "hi"}])


def test_no_gateway_configured_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFT_GATEWAY_URL", raising=False)
    llm = LLM(PUBLIC_BASE, deployment_type="shared", connection=Connection("acme", api_key="k"))
    with pytest.raises(ConfigError, match="GRAFT_GATEWAY_URL"):
        llm.chat.completions.create(messages=[])


def test_the_account_comes_from_the_argument_the_environment_or_the_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: from-context}},"
        " {name: bare, context: {cluster: k, user: u}}]\n"
    )
    monkeypatch.delenv("GRAFT_ACCOUNT", raising=False)
    assert Connection(kubeconfig=str(kubeconfig)).account == "from-context"
    assert Connection("given", kubeconfig=str(kubeconfig)).account == "given"
    monkeypatch.setenv("GRAFT_ACCOUNT", "from-env")
    assert Connection(kubeconfig=str(kubeconfig)).account == "from-env"
    monkeypatch.delenv("GRAFT_ACCOUNT")
    with pytest.raises(ConfigError, match="no account"):
        Connection(kubeconfig=str(kubeconfig), context="bare")
    with pytest.raises(ConfigError, match="Graft ID"):
        Connection("Not_An_ID")
