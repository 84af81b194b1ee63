"""`graft train`: LoRA fine-tuning of a base model on a chat or completion JSONL dataset.

The entrypoint of the trainer Job. Input problems are found before torch is even imported, so a
bad dataset fails in a fraction of a second with one message; see `graft.dataplane.train.command`.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    from graft.dataplane.train.command import main as command_main

    return command_main(argv)


__all__ = ["main"]
