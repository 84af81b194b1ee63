"""The LoRA training loop: transformers for the model, peft for the adapter, plain torch for the
loop (a few dozen lines that say exactly what happens; trl's SFTTrainer would not add anything
Graft needs and would hide the masking and the determinism).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from graft.api.dataformat import ChatExample, DatasetReport, Message
from graft.dataplane import progress as live
from graft.dataplane.train.config import TrainConfig
from graft.dataplane.train.encoding import EncodedExample, TemplateError, encode, truncate

IGNORE_INDEX = -100  # label value the loss skips

# peft calls a transformers method that transformers has deprecated; nothing for us to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


class TrainingInputError(Exception):
    """The inputs cannot be trained on (found once the model is loaded)."""


@dataclass(frozen=True)
class TrainResult:
    examples: int
    examples_skipped: int
    epochs: int
    steps: int
    tokens: int
    trained_tokens: int
    first_loss: float
    final_loss: float
    train_seconds: float


def train(
    config: TrainConfig,
    report: DatasetReport,
    output_dir: Path,
    log: Callable[[str], None],
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train and save the adapter; `log` gets a line per step, `progress` (when given) a
    report per step for the FineTuningJob's status (graft.dataplane.progress: it must not
    block, and it does not)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    random.seed(config.seed)
    torch.manual_seed(config.seed)

    log(f"loading base model {config.base_model}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(config.base_model))
        model = cast(
            Any, AutoModelForCausalLM.from_pretrained(str(config.base_model), dtype=torch.float32)
        )
    except (OSError, ValueError) as exc:
        raise TrainingInputError(f"cannot load base model {config.base_model}: {exc}") from exc
    if not tokenizer.is_fast:
        raise TrainingInputError("the base model's tokenizer has no fast (Rust) version")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    encoded, skipped = _encode_all(config, report, tokenizer)
    if not encoded:
        raise TrainingInputError(
            f"no example has anything to learn within --max-context-length "
            f"{config.max_context_length}: all {skipped} were cut before the first trained token"
        )

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        model = cast(Any, get_peft_model(model, lora))
    except ValueError as exc:
        raise TrainingInputError(f"cannot apply LoRA: {exc}") from exc
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()

    batches_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total_steps = config.max_steps or config.epochs * batches_per_epoch
    epochs = math.ceil(total_steps / batches_per_epoch)
    log(
        f"training: {len(encoded)} {report.format} examples ({skipped} skipped), "
        f"{total_steps} steps of {config.batch_size} over {epochs} epoch(s), "
        f"LoRA r={config.lora_rank} alpha={config.lora_alpha} on {config.target_modules}, "
        f"{trainable:,} trainable parameters"
    )

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    order_rng = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    tokens = trained_tokens = 0
    step = examples_done = 0
    started = time.monotonic()

    def tell(epoch: int, loss: float | None) -> None:
        if progress is not None:
            progress(
                live.report(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    total_epochs=epochs,
                    loss=loss,
                    examples=examples_done,
                    elapsed=time.monotonic() - started,
                    losses=losses,
                )
            )

    tell(1, None)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(encoded), generator=order_rng).tolist()
        for first in range(0, len(order), config.batch_size):
            if step >= total_steps:
                break
            batch = [encoded[i] for i in order[first : first + config.batch_size]]
            input_ids, attention, labels = _collate(batch, pad_id)
            out = model(input_ids=input_ids, attention_mask=attention, labels=labels)
            loss = out.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            examples_done += len(batch)
            losses.append(float(loss.detach()))
            tokens += int(attention.sum())
            trained_tokens += sum(e.trained_tokens for e in batch)
            elapsed = time.monotonic() - started
            log(
                f"step {step}/{total_steps}  epoch {epoch}/{epochs}  loss {losses[-1]:.4f}  "
                f"tokens {tokens}  {step / elapsed:.2f} steps/s  elapsed {elapsed:.1f}s"
            )
            tell(epoch, losses[-1])
    train_seconds = time.monotonic() - started

    model.save_pretrained(str(output_dir), safe_serialization=True)
    (output_dir / "README.md").unlink(missing_ok=True)  # peft's model card template
    log(f"saved adapter ({', '.join(sorted(p.name for p in output_dir.iterdir()))})")
    return TrainResult(
        examples=len(encoded),
        examples_skipped=skipped,
        epochs=epochs,
        steps=step,
        tokens=tokens,
        trained_tokens=trained_tokens,
        first_loss=losses[0],
        final_loss=losses[-1],
        train_seconds=train_seconds,
    )


def _encode_all(
    config: TrainConfig, report: DatasetReport, tokenizer: Any
) -> tuple[list[EncodedExample], int]:
    is_chat = report.format == "chat"
    if is_chat and not tokenizer.chat_template:
        raise TrainingInputError(
            "the base model has no chat template, so chat examples cannot be rendered; "
            "use the completion format"
        )

    def render(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    def tokenize(text: str) -> tuple[list[int], list[tuple[int, int]]]:
        # Chat templates write their own special tokens; plain text gets the tokenizer's (BOS).
        enc = tokenizer(text, add_special_tokens=not is_chat, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    encoded: list[EncodedExample] = []
    skipped = 0
    for example in report.examples:
        try:
            item = encode(example, render, tokenize, tokenizer.eos_token_id)
        except TemplateError as exc:
            assert isinstance(example, ChatExample)
            raise TrainingInputError(f"line {example.line}: {exc}") from exc
        item = truncate(item, config.max_context_length)
        if item.trained_tokens == 0:
            skipped += 1
            continue
        encoded.append(item)
    return encoded, skipped


def _collate(
    batch: Sequence[EncodedExample], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[row, :n] = ids
        attention[row, :n] = 1
        mask = torch.tensor(example.train_mask, dtype=torch.bool)
        labels[row, :n] = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
    return input_ids, attention, labels
