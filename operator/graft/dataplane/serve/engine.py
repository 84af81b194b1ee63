"""The generation engine of `graft serve`: one base model, several LoRA adapters, one thread.

All model work (forward passes, loading and deleting adapters) happens on a single worker thread,
so there is never more than one forward pass at a time and adapter state cannot change under a
running forward. Requests are decoded token by token, round-robin: before each step the worker
activates the adapter of the sequence it is about to advance, and every sequence keeps its own
KV cache, computed with its own adapter. Concurrent requests for different adapters therefore
interleave without ever mixing, and a long generation does not hold up the others.

peft names adapters after module attributes, so served names (`accounts/a/models/x`, with
slashes and dots) are mapped to internal names `lora1`, `lora2`, ...
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

import torch

from graft.dataplane.serve import protocol

_UNKNOWN = object()

# peft calls a transformers method that transformers has deprecated; nothing for us to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


@dataclass
class Adapter:
    name: str
    path: str
    internal: str
    rank: int
    parent: str
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class _Sequence:
    """One request being decoded; fed by the worker, drained by the request's coroutine."""

    def __init__(
        self,
        prompt_ids: list[int],
        adapter: Adapter | None,
        params: SamplingParams,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.prompt_ids = prompt_ids
        self.adapter = adapter
        self.params = params
        self.loop = loop
        self.events: asyncio.Queue[Delta | Finished | BaseException] = asyncio.Queue()
        self.generated: list[int] = []
        self.past: Any = None
        self.emitted = 0  # characters of text already sent
        self.stream = True
        self.cancelled = False
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator()
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "big")
            self.generator.manual_seed(seed % (2**63))

    def push(self, event: Delta | Finished | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _Job:
    """A function to run on the worker thread, between two decoding steps."""

    def __init__(
        self,
        fn: Callable[[], Any],
        loop: asyncio.AbstractEventLoop,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.ready = ready or (lambda: True)
        self.future: asyncio.Future[Any] = loop.create_future()

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:
            self.loop.call_soon_threadsafe(_set_exception, self.future, exc)
        else:
            self.loop.call_soon_threadsafe(_set_result, self.future, result)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Engine:
    def __init__(
        self,
        model_dir: str,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        torch_dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
        self.model = cast(Any, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype))
        self.model.eval()
        self.peft: Any = None  # the PeftModel wrapper, once the first adapter is loaded
        # internal name of the active adapter, None for the base model, _UNKNOWN after a change
        self._active: object = _UNKNOWN
        self._next_id = 0

        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or 2048
        self.max_model_len = min(max_model_len, limit) if max_model_len else limit
        self.eos_ids = _eos_ids(self.model, self.tokenizer)

        self._inbox: queue.SimpleQueue[_Sequence | _Job] = queue.SimpleQueue()
        self._active_seqs: list[_Sequence] = []
        self._waiting_jobs: list[_Job] = []
        self._thread = threading.Thread(target=self._run, name="graft-engine", daemon=True)
        self._thread.start()

    # --- prompts ------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
        if not self.tokenizer.chat_template:
            raise protocol.APIError(
                "this model has no chat template; use /v1/completions", param="messages"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja errors: the template refused these messages
            raise protocol.APIError(f"cannot apply the chat template: {exc}") from exc
        return list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str | list[str] | list[int]) -> list[int]:
        if isinstance(prompt, list):
            if all(isinstance(p, int) for p in prompt) and prompt:
                return [int(p) for p in prompt]
            if len(prompt) != 1:
                raise protocol.APIError("only one prompt per request is supported", param="prompt")
            prompt = str(prompt[0])
        return list(self.tokenizer(prompt)["input_ids"])

    # --- generation ---------------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        adapter: Adapter | None,
        params: SamplingParams,
        *,
        stream: bool = True,
    ) -> AsyncIterator[Delta | Finished]:
        """Text deltas, then one Finished. Closing the iterator early cancels the request.

        Without `stream`, the text comes as one delta at the end: no wake-up of the event loop
        per token, which would compete with the worker for the GIL for nothing.
        """
        seq = _Sequence(prompt_ids, adapter, params, asyncio.get_running_loop())
        seq.stream = stream
        self._inbox.put(seq)
        try:
            while True:
                event = await seq.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            seq.cancelled = True

    # --- adapters -----------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: str, parent: str) -> Adapter:
        """Load on the worker thread. Raises protocol.APIError for a missing adapter."""
        loop = asyncio.get_running_loop()
        self._next_id += 1
        internal = f"lora{self._next_id}"
        job = _Job(lambda: self._load(name, path, internal, parent), loop)
        self._inbox.put(job)
        result: Adapter = await job.future
        return result

    async def unload_adapter(self, adapter: Adapter) -> None:
        """Delete once no running request uses it (new requests can no longer pick it)."""
        loop = asyncio.get_running_loop()

        def unused() -> bool:
            return all(seq.adapter is not adapter for seq in self._active_seqs)

        job = _Job(lambda: self._delete(adapter), loop, ready=unused)
        self._inbox.put(job)
        await job.future

    def _load(self, name: str, path: str, internal: str, parent: str) -> Adapter:
        from peft import PeftModel

        rank = adapter_rank(path)
        self._active = _UNKNOWN  # peft may switch the active adapter while loading
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=internal)
                self.peft.eval()
            else:
                self.peft.load_adapter(path, adapter_name=internal)
        except Exception:
            if self.peft is not None and internal in self.peft.peft_config:
                self.peft.delete_adapter(internal)
            raise
        return Adapter(name=name, path=path, internal=internal, rank=rank, parent=parent)

    def _delete(self, adapter: Adapter) -> None:
        if self.peft is not None and adapter.internal in self.peft.peft_config:
            self._active = _UNKNOWN
            self.peft.delete_adapter(adapter.internal)

    def _activate(self, adapter: Adapter | None) -> None:
        if self.peft is None:
            return
        wanted = adapter.internal if adapter else None
        if wanted == self._active:
            return
        lora_model = self.peft.base_model
        if wanted is None:
            lora_model.disable_adapter_layers()
        else:
            if self._active is None or self._active is _UNKNOWN:
                lora_model.enable_adapter_layers()
            self.peft.set_adapter(wanted)
        self._active = wanted

    # --- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            self._take_inbox(block=not self._active_seqs and not self._waiting_jobs)
            still_waiting = []
            for job in self._waiting_jobs:
                if job.ready():
                    job.run()
                else:
                    still_waiting.append(job)
            self._waiting_jobs = still_waiting
            for seq in list(self._active_seqs):
                done = True
                if not seq.cancelled:
                    try:
                        done = self._step(seq)
                    except Exception as exc:
                        seq.push(exc)
                if done:
                    self._active_seqs.remove(seq)
                    seq.past = None
            if self._waiting_jobs and not self._active_seqs and self._inbox.empty():
                time.sleep(0.001)  # a job waits on sequences that were just cancelled

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(block=block, timeout=None if block else 0)
        except queue.Empty:
            return
        while True:
            if isinstance(item, _Sequence):
                self._active_seqs.append(item)
            else:
                self._waiting_jobs.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _step(self, seq: _Sequence) -> bool:
        """Decode one token of `seq`; True when it is finished."""
        self._activate(seq.adapter)
        if seq.past is None:
            input_ids = torch.tensor([seq.prompt_ids], dtype=torch.long)
        else:
            input_ids = torch.tensor([[seq.generated[-1]]], dtype=torch.long)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids, past_key_values=seq.past, use_cache=True)
        seq.past = out.past_key_values
        token = sample(out.logits[0, -1], seq.params, seq.generator)

        params = seq.params
        if token in self.eos_ids and not params.ignore_eos:
            text = self._text(seq)
            seq.generated.append(token)  # counted in usage, as vLLM does, but not shown
            return self._finish(seq, "stop", text)
        seq.generated.append(token)
        text = self._text(seq)
        for stop in params.stop:
            at = text.find(stop, max(0, seq.emitted - len(stop)))
            if at >= 0:
                return self._finish(seq, "stop", text[:at])
        if len(seq.generated) >= params.max_tokens:
            return self._finish(seq, "length", text)
        if not seq.stream:
            return False
        # Hold back what could still become a stop string, and half-decoded UTF-8.
        safe = len(text) - _partial_stop(text, params.stop)
        while safe > seq.emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        if safe > seq.emitted:
            seq.push(Delta(text[seq.emitted : safe]))
            seq.emitted = safe
        return False

    def _finish(self, seq: _Sequence, reason: str, text: str) -> bool:
        if len(text) > seq.emitted:
            seq.push(Delta(text[seq.emitted :]))
            seq.emitted = len(text)
        seq.push(Finished(reason, len(seq.prompt_ids), len(seq.generated)))
        return True

    def _text(self, seq: _Sequence) -> str:
        return str(self.tokenizer.decode(seq.generated, skip_special_tokens=True))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.greedy or generator is None:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already cover top_p
        drop = torch.cumsum(probs, dim=-1) - probs > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def local_path(location: str) -> str:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return location


def adapter_rank(path: str) -> int:
    """The largest LoRA rank in an adapter directory's adapter_config.json."""
    return lora_rank(json.loads((Path(path) / "adapter_config.json").read_text()))


def lora_rank(config: dict[str, Any]) -> int:
    """The largest rank of a LoRA adapter config (`r`, or a larger one in `rank_pattern`)."""
    ranks = [int(config.get("r", 0))]
    ranks += [int(r) for r in (config.get("rank_pattern") or {}).values()]
    return max(ranks)


def read_adapter_config(path: str) -> dict[str, Any] | None:
    """The adapter's config, or None when `path` holds no adapter."""
    config_path = Path(path) / "adapter_config.json"
    if not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
