"""HTTP client for a model server's OpenAI/vLLM API: what it serves, load and unload addons.

Only the standard library: the operator talks to its pods with short timeouts, and treats
vLLM's "already loaded" (load) and "not found" (unload) answers as success, since the state the
operator wants is reached either way.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT_SECONDS = 5.0
LOAD_TIMEOUT_SECONDS = 120.0


class ModelServerError(Exception):
    """The server refused the request; the message is the server's own."""


class ModelServerUnreachable(ModelServerError):
    """Nothing answered (yet): the server may still be starting."""


@dataclass(frozen=True)
class ServedModel:
    id: str
    parent: str | None


def _request(url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _decode(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read())
    except (OSError, TimeoutError) as exc:
        raise ModelServerUnreachable(f"{url}: {getattr(exc, 'reason', exc)}") from exc


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def _message(status: int, body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"HTTP {status}: {err['message']}"
        if body.get("message"):
            return f"HTTP {status}: {body['message']}"
    return f"HTTP {status}: {str(body)[:500]}"


def served_models(base_url: str, timeout: float = TIMEOUT_SECONDS) -> list[ServedModel]:
    """GET /v1/models: what the server really serves right now."""
    status, body = _request(f"{base_url}/v1/models", None, timeout)
    if status != 200 or not isinstance(body, dict):
        raise ModelServerError(f"{base_url}/v1/models: {_message(status, body)}")
    return [ServedModel(id=m["id"], parent=m.get("parent")) for m in body.get("data") or []]


def load_adapter(
    base_url: str, name: str, path: str, timeout: float = LOAD_TIMEOUT_SECONDS
) -> None:
    """POST /v1/load_lora_adapter; an adapter that is already loaded counts as loaded."""
    status, body = _request(
        f"{base_url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, timeout
    )
    if status == 200:
        return
    message = _message(status, body)
    if status == 400 and "already been loaded" in message:
        return
    raise ModelServerError(message)


def unload_adapter(base_url: str, name: str, timeout: float = TIMEOUT_SECONDS) -> None:
    """POST /v1/unload_lora_adapter; an adapter that is not there counts as unloaded."""
    status, body = _request(f"{base_url}/v1/unload_lora_adapter", {"lora_name": name}, timeout)
    if status == 200:
        return
    message = _message(status, body)
    if status == 404 or (
        status == 400 and ("cannot be found" in message or "not found" in message.lower())
    ):
        return
    raise ModelServerError(message)
