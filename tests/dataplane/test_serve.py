"""`graft serve` as a real subprocess, driven by the official `openai` client (and httpx where
the client has no method: vLLM's LoRA endpoints, /health, /metrics).

The server hosts the tiny base model as `accounts/acme/models/tiny-base` with two adapters
trained briefly by `graft train` to answer "alpha alpha alpha" and "bravo bravo bravo".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from dataplane_support import ALPHA, BASE_NAME, BRAVO, Adapters, Server

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

QUESTION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 3 plus 9?"},
]


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client: openai.OpenAI, model: str, **kwargs: Any) -> str:
    options: dict[str, Any] = {"temperature": 0, "max_tokens": 24, **kwargs}
    response = client.chat.completions.create(model=model, messages=QUESTION, **options)
    return response.choices[0].message.content or ""


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


@pytest.fixture
def loaded(server: Server) -> Iterator[list[str]]:
    """Names of adapters a test loads; unloaded afterwards so tests stay independent."""
    names: list[str] = []
    yield names
    for name in names:
        post(server, "/v1/unload_lora_adapter", {"lora_name": name})


def test_health(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_models_lists_base_and_adapters_with_parent(
    client: openai.OpenAI, adapters: Adapters
) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert sorted(models) == sorted([BASE_NAME, ALPHA, BRAVO])
    assert models[ALPHA].model_extra is not None
    assert models[ALPHA].model_extra["parent"] == BASE_NAME
    assert models[BRAVO].model_extra is not None
    assert models[BRAVO].model_extra["parent"] == BASE_NAME
    assert models[BASE_NAME].model_extra is not None
    assert models[BASE_NAME].model_extra["parent"] is None
    assert models[ALPHA].model_extra["root"] == str(adapters.alpha)


def test_greedy_outputs_differ_and_follow_each_adapter(client: openai.OpenAI) -> None:
    base = chat(client, BASE_NAME)
    alpha = chat(client, ALPHA)
    bravo = chat(client, BRAVO)
    assert alpha.startswith("alpha alpha alpha"), alpha
    assert bravo.startswith("bravo bravo bravo"), bravo
    assert "alpha" not in base, base
    assert "bravo" not in base, base
    # greedy is deterministic
    assert chat(client, ALPHA) == alpha
    assert chat(client, BASE_NAME) == base


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=ALPHA, messages=QUESTION, temperature=0, max_tokens=40
    )
    assert response.object == "chat.completion"
    assert response.model == ALPHA
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "alpha alpha alpha"  # trained to stop after it
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens > 20
    # the text, <|im_end|> included in the count as vLLM does
    assert response.usage.completion_tokens == len("alpha alpha alpha") + 1
    assert response.usage.total_tokens == response.usage.prompt_tokens + 18


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=BRAVO, messages=QUESTION, temperature=0, max_tokens=3
    )
    assert response.choices[0].message.content == "bra"
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 3
    stopped = client.chat.completions.create(
        model=BRAVO, messages=QUESTION, temperature=0, max_tokens=30, stop=["o b"]
    )
    assert stopped.choices[0].message.content == "brav"
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    prompt = "<|im_start|>user\nWhat is 1 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    response = client.completions.create(model=ALPHA, prompt=prompt, max_tokens=11, temperature=0)
    assert response.object == "text_completion"
    assert response.choices[0].text == "alpha alpha"
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 11
    # the tiny tokenizer: one token per byte of text, one per special token
    text_bytes = len(prompt.replace("<|im_start|>", "").replace("<|im_end|>", "").encode())
    assert response.usage.prompt_tokens == text_bytes + 3


def test_default_completion_length_is_16(client: openai.OpenAI) -> None:
    response = client.completions.create(model=BASE_NAME, prompt="Hello", temperature=0)
    assert response.usage is not None
    assert response.usage.completion_tokens == 16 or response.choices[0].finish_reason == "stop"


def test_streaming_chat_matches_non_streaming(client: openai.OpenAI) -> None:
    for model in (BASE_NAME, ALPHA):
        expected = chat(client, model)
        stream = client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected
        assert chunks[0].choices[0].delta.role == "assistant"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] in ("stop", "length")
        assert all(f is None for f in finishes[:-1])
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens >= len(text.encode()) - 3
        assert {c.model for c in chunks} == {model}


def test_streaming_completions(client: openai.OpenAI) -> None:
    prompt = "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    whole = client.completions.create(model=BRAVO, prompt=prompt, max_tokens=20, temperature=0)
    assert whole.choices[0].text.startswith("bravo bravo bravo")
    stream = client.completions.create(
        model=BRAVO, prompt=prompt, max_tokens=20, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int, top_p: float = 1.0) -> str:
        return chat(client, BASE_NAME, seed=seed, temperature=2.0, top_p=top_p)

    assert sample(1) == sample(1)
    assert len({sample(s) for s in range(1, 6)}) > 1
    # a tiny top_p keeps only the most likely token: sampling becomes greedy
    assert sample(3, top_p=1e-6) == chat(client, BASE_NAME)


def test_unknown_model_is_vllm_404(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "accounts/acme/models/nope")
    assert caught.value.status_code == 404
    response = post(
        server,
        "/v1/chat/completions",
        {"model": "accounts/acme/models/nope", "messages": QUESTION},
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `accounts/acme/models/nope` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_bad_requests_are_400(server: Server) -> None:
    response = post(server, "/v1/completions", {"model": BASE_NAME, "prompt": "x", "max_tokens": 0})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"
    assert "max_tokens" in response.json()["error"]["message"]
    too_long = post(
        server, "/v1/completions", {"model": BASE_NAME, "prompt": "x", "max_tokens": 5000}
    )
    assert too_long.status_code == 400
    assert "maximum context length is 1024 tokens" in too_long.json()["error"]["message"]


def test_load_use_and_unload_over_http(
    client: openai.OpenAI, server: Server, adapters: Adapters, loaded: list[str]
) -> None:
    name = "accounts/acme/models/charlie"
    response = post(
        server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(adapters.charlie)}
    )
    assert response.status_code == 200, response.text
    loaded.append(name)
    assert response.text == f"Success: LoRA adapter '{name}' added successfully."
    assert name in {m.id for m in client.models.list().data}
    assert chat(client, name).startswith("charlie charlie charlie")

    response = post(server, "/v1/unload_lora_adapter", {"lora_name": name})
    assert response.status_code == 200
    assert response.text == f"Success: LoRA adapter '{name}' removed successfully."
    assert name not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        chat(client, name)
    # the others are untouched
    assert chat(client, ALPHA).startswith("alpha alpha alpha")


def test_already_loaded_and_not_found(server: Server, adapters: Adapters) -> None:
    again = post(
        server, "/v1/load_lora_adapter", {"lora_name": ALPHA, "lora_path": str(adapters.alpha)}
    )
    assert again.status_code == 400
    assert again.json()["error"]["type"] == "InvalidUserInput"
    assert again.json()["error"]["message"].startswith(
        f"The lora adapter '{ALPHA}' has already been loaded."
    )

    missing = post(server, "/v1/unload_lora_adapter", {"lora_name": "accounts/acme/models/never"})
    assert missing.status_code == 404  # vLLM answers 404 NotFoundError here
    assert missing.json()["error"] == {
        "message": "The lora adapter 'accounts/acme/models/never' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }

    no_files = post(
        server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nonexistent/adapter"}
    )
    assert no_files.status_code == 404
    assert (
        no_files.json()["error"]["message"]
        == "Loading lora x failed: No adapter found for /nonexistent/adapter"
    )

    empty = post(server, "/v1/load_lora_adapter", {"lora_name": "", "lora_path": ""})
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."


def test_max_lora_rank_refusal_names_the_rank(server: Server, adapters: Adapters) -> None:
    response = post(
        server, "/v1/load_lora_adapter", {"lora_name": "wide", "lora_path": str(adapters.rank16)}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "LoRA rank 16 is greater than max_lora_rank 8."
    assert "wide" not in httpx.get(f"{server.url}/v1/models").text


def test_max_loras_refuses_without_evicting(
    client: openai.OpenAI, server: Server, adapters: Adapters, loaded: list[str]
) -> None:
    # --max-loras 3 with alpha and bravo loaded: one more fits, the next is refused.
    first = post(
        server, "/v1/load_lora_adapter", {"lora_name": "third", "lora_path": str(adapters.charlie)}
    )
    assert first.status_code == 200
    loaded.append("third")
    refused = post(
        server, "/v1/load_lora_adapter", {"lora_name": "fourth", "lora_path": str(adapters.charlie)}
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "Cannot load LoRA adapter 'fourth': 3 adapters are already loaded and --max-loras is 3. "
        "Unload an adapter first."
    )
    assert sorted(m.id for m in client.models.list().data) == sorted(
        [BASE_NAME, ALPHA, BRAVO, "third"]
    )
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "third"}).status_code == 200
    loaded.remove("third")
    retry = post(
        server, "/v1/load_lora_adapter", {"lora_name": "fourth", "lora_path": str(adapters.charlie)}
    )
    assert retry.status_code == 200
    loaded.append("fourth")


def test_concurrent_requests_never_mix_adapters(client: openai.OpenAI) -> None:
    models = [ALPHA, BRAVO, BASE_NAME] * 3

    def ask(model: str) -> str:
        response = client.completions.create(
            model=model,
            prompt="<|im_start|>user\nWhat is 3 plus 9?<|im_end|>\n<|im_start|>assistant\n",
            max_tokens=30,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return response.choices[0].text

    sequential = {model: ask(model) for model in set(models)}
    assert len(set(sequential.values())) == 3
    with ThreadPoolExecutor(max_workers=len(models)) as pool:
        concurrent = list(pool.map(ask, models))
    assert concurrent == [sequential[m] for m in models]


def test_a_closed_stream_does_not_disturb_the_server(client: openai.OpenAI) -> None:
    expected = chat(client, ALPHA)
    stream = client.chat.completions.create(
        model=BRAVO,
        messages=QUESTION,
        max_tokens=900,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for received, _chunk in enumerate(stream, start=1):
        if received == 3:
            break
    stream.close()  # the client goes away mid-generation
    assert chat(client, ALPHA) == expected


def test_metrics(server: Server, client: openai.OpenAI) -> None:
    chat(client, ALPHA)
    text = httpx.get(f"{server.url}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["graft_loaded_adapters"] == 2
    assert samples["graft_max_loras"] == 3
    assert samples["graft_adapter_load_seconds_count"] >= 2
    assert samples[f'graft_generation_tokens_total{{model="{ALPHA}"}}'] >= 17
    assert samples[f'graft_prompt_tokens_total{{model="{ALPHA}"}}'] > 0
    assert samples['graft_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1


def test_any_loopback_address_and_lora_disabled(tiny_model: Path, tmp_path: Path) -> None:
    server = Server(
        ["--model", str(tiny_model), "--served-model-name", "plain"],
        tmp_path / "serve.log",
        host="127.43.21.9",
    ).wait_ready()
    try:
        models = httpx.get(f"{server.url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["plain"]
        refused = post(
            server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(tmp_path)}
        )
        assert refused.status_code == 400
        assert "--enable-lora" in refused.json()["error"]["message"]
    finally:
        server.stop()


def test_startup_fails_clearly_on_a_bad_lora_module(tiny_model: Path, tmp_path: Path) -> None:
    module = json.dumps({"name": "a", "path": str(tmp_path / "missing")})
    server = Server(
        ["--model", str(tiny_model), "--enable-lora", "--lora-modules", module],
        tmp_path / "serve.log",
    )
    assert server.process.wait(timeout=120) == 1
    assert (
        f"graft serve: error: cannot load LoRA module a: Loading lora a failed: No adapter found "
        f"for {tmp_path / 'missing'}" in server.output()
    )


def test_api_key_guards_every_v1_path_but_not_health(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a model-server pod: the key comes from VLLM_API_KEY (a Secret), not the command line.
    monkeypatch.setenv("VLLM_API_KEY", "k-123")
    server = Server(
        ["--model", str(tiny_model), "--served-model-name", "plain", "--enable-lora"],
        tmp_path / "serve.log",
    ).wait_ready()
    try:
        assert "k-123" not in " ".join(server.command)
        assert httpx.get(f"{server.url}/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-123"}):
            refused = httpx.get(f"{server.url}/v1/models", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["error"]["message"] == "missing or wrong API key"
        load = httpx.post(
            f"{server.url}/v1/load_lora_adapter",
            json={"lora_name": "a", "lora_path": str(tmp_path)},
        )
        assert load.status_code == 401
        good = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer k-123"})
        assert [m["id"] for m in good.json()["data"]] == ["plain"]
    finally:
        server.stop()
