"""What `graft train` was asked to do, once its command line is parsed and checked.

Its own module so that the command (graft.dataplane.train.command) and the training loop
(graft.dataplane.train.trainer) both depend on it, and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    base_model: Path
    dataset: Path
    output: Path
    output_location: str  # as given on the command line (a path or a file:// URI)
    epochs: int
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: str | list[str]
    batch_size: int
    max_context_length: int
    seed: int
    max_steps: int | None
