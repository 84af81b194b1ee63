"""Pure parts of `graft serve`: --lora-modules parsing and vLLM's error shapes (no torch)."""

from __future__ import annotations

import pytest

from graft.dataplane.serve import protocol
from graft.dataplane.serve.protocol import LoRAModule, parse_lora_module


def test_lora_module_name_equals_path() -> None:
    assert parse_lora_module("accounts/a/models/x=/models/x") == LoRAModule(
        "accounts/a/models/x", "/models/x"
    )
    # only the first '=' separates: paths may contain more
    assert parse_lora_module("x=/data/run=3") == LoRAModule("x", "/data/run=3")


def test_lora_module_json_form() -> None:
    text = '{"name": "accounts/a/models/x", "path": "file:///m/x", "base_model_name": "b"}'
    assert parse_lora_module(text) == LoRAModule("accounts/a/models/x", "file:///m/x", "b")
    assert parse_lora_module('{"name": "x", "path": "/p"}') == LoRAModule("x", "/p", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no-equals-sign", "expects name=path"),
        ("=path", "expects name=path"),
        ("name=", "expects name=path"),
        ('{"name": "x"}', 'needs "name" and "path"'),
        ('{"name": "x", "path": 3}', 'needs "name" and "path"'),
        ('{"name": "x", "path": "/p", "base_model_name": 1}', "must be a string"),
        ("{not json", "invalid JSON"),
    ],
)
def test_bad_lora_modules(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lora_module(text)


def test_error_shapes_match_vllm() -> None:
    assert protocol.model_not_found("accounts/a/models/x").body() == {
        "error": {
            "message": "The model `accounts/a/models/x` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    already = protocol.lora_already_loaded("x")
    assert int(already.status) == 400
    assert already.err_type == "InvalidUserInput"
    assert already.message.startswith("The lora adapter 'x' has already been loaded.")
    missing = protocol.lora_not_found("x")
    assert (int(missing.status), missing.message) == (404, "The lora adapter 'x' cannot be found.")
    rank = protocol.lora_rank_too_high(32, 16)
    assert (int(rank.status), rank.message) == (
        400,
        "LoRA rank 32 is greater than max_lora_rank 16.",
    )


def test_sampling_request_helpers() -> None:
    request = protocol.CompletionRequest(prompt="p", stop="\n", extra_field=1)  # type: ignore[call-arg]
    assert request.stop_strings() == ["\n"]
    assert request.requested_max_tokens() == 16
    assert not request.include_usage()
    assert protocol.unsupported(protocol.CompletionRequest(prompt="p", n=2)) is not None
    chat = protocol.ChatCompletionRequest(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],  # type: ignore[list-item]
        max_completion_tokens=5,
        max_tokens=9,
    )
    assert chat.messages[0].text() == "ab"
    assert chat.requested_max_tokens() == 5


def test_pure_modules_do_not_import_torch() -> None:
    """The operator imports these (dataset validation, builders): they must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, graft.api.dataformat, graft.dataplane.train, graft.dataplane.train.command, graft.dataplane.train.encoding, "
        "graft.dataplane.serve, graft.dataplane.serve.protocol; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'fastapi', 'kopf', 'kubernetes') "
        "if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
