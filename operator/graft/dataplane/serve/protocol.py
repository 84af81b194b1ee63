"""Request and response shapes of `graft serve`: the OpenAI API as vLLM serves it, plus vLLM's
LoRA endpoints. Pure (pydantic only), so it can be tested and reused without torch.

Error bodies are vLLM's (which are OpenAI's): ``{"error": {"message", "type", "param", "code"}}``
with the HTTP status in `code`, and vLLM's messages where vLLM has one.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --- errors -------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered to the client with vLLM's error body."""

    def __init__(
        self,
        message: str,
        *,
        err_type: str = "BadRequestError",
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type
        self.status = status
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.err_type, self.status, self.param)


def error_body(
    message: str, err_type: str, status: HTTPStatus, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}


def model_not_found(name: str) -> APIError:
    return APIError(
        f"The model `{name}` does not exist.",
        err_type="NotFoundError",
        status=HTTPStatus.NOT_FOUND,
        param="model",
    )


def lora_already_loaded(name: str) -> APIError:
    return APIError(
        f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
        "in place, set 'load_inplace' to True.",
        err_type="InvalidUserInput",
    )


def lora_not_found(name: str) -> APIError:
    return APIError(
        f"The lora adapter '{name}' cannot be found.",
        err_type="NotFoundError",
        status=HTTPStatus.NOT_FOUND,
    )


def lora_path_not_found(name: str, path: str) -> APIError:
    return APIError(
        f"Loading lora {name} failed: No adapter found for {path}",
        err_type="NotFoundError",
        status=HTTPStatus.NOT_FOUND,
    )


def lora_rank_too_high(rank: int, max_rank: int) -> APIError:
    return APIError(f"LoRA rank {rank} is greater than max_lora_rank {max_rank}.")


def too_many_loras(name: str, loaded: int, max_loras: int) -> APIError:
    # vLLM would evict the least recently used adapter from its GPU slots; a reference server
    # that the operator drives should rather say no, so that what is served is what was asked.
    return APIError(
        f"Cannot load LoRA adapter '{name}': {loaded} adapters are already loaded and "
        f"--max-loras is {max_loras}. Unload an adapter first."
    )


def context_too_long(max_model_len: int, prompt_tokens: int, max_tokens: int) -> APIError:
    return APIError(
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
        "the completion). Please reduce the length of the messages or completion.",
        param="max_tokens",
    )


# --- requests -----------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    # Like vLLM: fields we do not know are accepted and ignored.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM extension; -1 or 0 disables
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM extension
    logprobs: Any = None
    user: str | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(f"content part of type {part.type!r} is not supported")
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    add_generation_prompt: bool = True  # vLLM extension

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int]
    echo: bool = False

    def requested_max_tokens(self) -> int:
        return self.max_tokens or 16  # the OpenAI (and vLLM) default for completions


class LoadLoRAAdapterRequest(BaseModel):
    lora_name: str = ""
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    lora_name: str = ""
    lora_int_id: int | None = None


def unsupported(request: SamplingRequest) -> APIError | None:
    """What graft serve refuses rather than silently ignores."""
    if request.n != 1:
        return APIError("n > 1 is not supported by graft serve", param="n")
    if request.logprobs not in (None, False):
        return APIError("logprobs are not supported by graft serve", param="logprobs")
    if isinstance(request, CompletionRequest) and request.echo:
        return APIError("echo is not supported by graft serve", param="echo")
    return None


# --- responses ----------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class ModelCard:
    id: str
    root: str
    parent: str | None
    max_model_len: int | None
    created: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": "graft",
            "root": self.root,
            "parent": self.parent,
            "max_model_len": self.max_model_len,
            "permission": [],
        }


def model_list(cards: list[ModelCard]) -> dict[str, Any]:
    return {"object": "list", "data": [card.to_json() for card in cards]}


FinishReason = Literal["stop", "length"]


def chat_completion(
    request_id: str, model: str, text: str, *, finish: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage(prompt, completion),
    }


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, str],
    finish: str | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion(
    request_id: str, model: str, text: str, *, finish: str, prompt: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt, completion_tokens),
    }


def completion_chunk(
    request_id: str, model: str, created: int, text: str, finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(
    request_id: str, model: str, created: int, *, obj: str, prompt: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt, completion_tokens),
    }


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


# --- command line -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAModule:
    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoRAModule:
    """`name=path` or vLLM's JSON form `{"name": ..., "path": ..., "base_model_name": ...}`."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON in --lora-modules: {exc.msg}: {text}") from exc
        if not isinstance(obj, dict):
            raise ValueError(f"--lora-modules JSON must be an object: {text}")
        name, path, base = obj.get("name"), obj.get("path"), obj.get("base_model_name")
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise ValueError(f'--lora-modules JSON needs "name" and "path" strings: {text}')
        if base is not None and not isinstance(base, str):
            raise ValueError(f'--lora-modules "base_model_name" must be a string: {text}')
        return LoRAModule(name=name, path=path, base_model_name=base)
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules expects name=path or a JSON object, got: {text}")
    return LoRAModule(name=name, path=path)
