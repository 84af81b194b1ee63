"""`graft serve`: Graft's reference model server.

An OpenAI-compatible HTTP server (FastAPI + uvicorn) over transformers + peft that hosts one base
model and several LoRA adapters in one process and speaks vLLM's multi-LoRA API
(`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`, `--lora-modules`, ...), so that every code
path of the operator runs for real on a CPU. Production GPU serving stays on vLLM or SGLang.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    from graft.dataplane.serve.command import main as command_main

    return command_main(argv)


__all__ = ["main"]
