"""One builder per model-server engine: the container that serves a base model (pure).

Every engine serves the OpenAI-compatible API on port 8000 under the base model's full name and,
with addons enabled, vLLM's multi-LoRA flags and run-time load/unload endpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from graft.api.serving import MANAGED_ENGINE_FLAGS, RESERVED_ENV, Engine
from graft.core.keys import MODEL_SERVER
from graft.core.settings import SERVER_API_KEY_ENV

API_KEY_FIELD = "api-key"
"""The key of the Deployment's server-key Secret that holds the API key its servers require."""

PORT = 8000
PORT_NAME = "http"


@dataclass(frozen=True)
class Addon:
    """An addon every new replica starts with (`--lora-modules`)."""

    name: str
    path: str
    base_model_name: str


@dataclass(frozen=True)
class ServerSpec:
    """Everything an engine builder needs; built from the Deployment and its base Model."""

    model_path: str
    served_name: str
    image: str  # the Deployment's spec.image, else the operator's image for the engine
    enable_addons: bool = False
    max_addons: int = 4
    max_addon_rank: int = 16
    addons: tuple[Addon, ...] = ()
    extra_args: tuple[str, ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    mounts: tuple[dict[str, Any], ...] = ()
    env: tuple[dict[str, str], ...] = ()
    api_key_secret: str | None = None
    """The Secret whose API key the server requires on /v1/ (VLLM_API_KEY, from the Secret, so
    the key is never on the command line or in the pod spec)."""


def _lora_args(spec: ServerSpec) -> list[str]:
    if not spec.enable_addons:
        return []
    args = [
        "--enable-lora",
        "--max-loras",
        str(spec.max_addons),
        "--max-lora-rank",
        str(spec.max_addon_rank),
    ]
    if spec.addons:
        args.append("--lora-modules")
        args += [
            json.dumps(
                {"name": a.name, "path": a.path, "base_model_name": a.base_model_name},
                separators=(",", ":"),
            )
            for a in spec.addons
        ]
    return args


def overridden_flags(args: tuple[str, ...] | list[str]) -> list[str]:
    """The engine arguments that would set (or abbreviate) a flag Graft manages; the CRD's CEL
    rule refuses the same at admission (graft.api.serving.ENGINE_ARGS_RULE)."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("_", "-")
            if any(flag.startswith(name) for flag in MANAGED_ENGINE_FLAGS):
                out.append(arg)
    return out


def reserved_env(names: list[str]) -> list[str]:
    """The variables of a Deployment's env that Graft reserves (graft.api.serving.ENV_RULE)."""
    return [n for n in names if n in RESERVED_ENV]


SHM = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
"""vLLM's worker processes share tensors through /dev/shm, which is 64 MiB in a container."""


def engine_volumes(engine: Engine | str) -> list[dict[str, Any]]:
    return [SHM] if Engine(engine) == Engine.VLLM else []


def _container(
    spec: ServerSpec, command: list[str], head: list[str], managed: list[str]
) -> dict[str, Any]:
    """The container; Graft's own flags come after the tenant's extra args, so that where a flag
    is given twice, Graft's wins (argparse keeps the last)."""
    container: dict[str, Any] = {
        "name": MODEL_SERVER,
        "image": spec.image,
        "command": command,
        "args": [*head, *spec.extra_args, *managed],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": spec.resources,
    }
    if spec.mounts:
        container["volumeMounts"] = list(spec.mounts)
    env: list[dict[str, Any]] = list(spec.env)
    if spec.api_key_secret:
        env.append(
            {
                "name": SERVER_API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": spec.api_key_secret, "key": API_KEY_FIELD}},
            }
        )
    if env:
        container["env"] = env
    return container


def _server_args(spec: ServerSpec) -> list[str]:
    """The flags every engine shares (graft serve speaks vLLM's): what to serve, under which
    name, where to listen, and the LoRA flags."""
    return [
        "--model",
        spec.model_path,
        "--served-model-name",
        spec.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(PORT),
        *_lora_args(spec),
    ]


def vllm_container(spec: ServerSpec) -> dict[str, Any]:
    command = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    container = _container(spec, command, [], _server_args(spec))
    container["volumeMounts"] = [
        *container.get("volumeMounts", []),
        {"name": SHM["name"], "mountPath": "/dev/shm"},
    ]
    # Loading weights can take minutes; the startup probe keeps the kubelet from killing it early.
    container["startupProbe"] = {
        "httpGet": {"path": "/health", "port": PORT_NAME},
        "periodSeconds": 10,
        "failureThreshold": 90,
    }
    # It runs as a non-root user (Pod Security "restricted"), whose HOME the image does not have.
    env = [*container.get("env", []), {"name": "HOME", "value": "/tmp"}]
    if spec.enable_addons:
        # vLLM serves run-time /v1/load_lora_adapter only with this set.
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    container["env"] = env
    return container


def reference_container(spec: ServerSpec) -> dict[str, Any]:
    return _container(spec, ["graft"], ["serve"], _server_args(spec))


BUILDERS = {Engine.VLLM: vllm_container, Engine.REFERENCE: reference_container}


def container_for(engine: Engine | str, spec: ServerSpec) -> dict[str, Any]:
    return BUILDERS[Engine(engine)](spec)
