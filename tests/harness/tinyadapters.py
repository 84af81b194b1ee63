"""Small LoRA adapters for the tiny built-in model, made in code (no training, no download)."""

from __future__ import annotations

from pathlib import Path


def random_adapter(base: Path, dest: Path, *, rank: int, seed: int) -> Path:
    """A LoRA adapter with random (non-identity) weights, so the addon answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank, lora_alpha=4 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(dest)
    return dest


def broken_adapter(dest: Path, *, rank: int) -> Path:
    """adapter_config.json that reads fine, next to weights that are not a safetensors file."""
    import json

    dest.mkdir(parents=True)
    (dest / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ["q_proj"]}
        )
    )
    (dest / "adapter_model.safetensors").write_bytes(b"this is not a safetensors file")
    return dest
