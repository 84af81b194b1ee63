"""Data-plane figures: trainer steps/s, adapter hot-load latency, and tokens/s of `graft serve`
over HTTP against plain transformers `generate` on the same model and prompt.

    python bench/dataplane.py            # SmolLM2-135M-Instruct (converted once, then cached)
    python bench/dataplane.py --tiny     # the tiny random model: seconds, for a smoke run

Not a test: it prints numbers. Runs in about two minutes on 2 idle CPU cores (plus ~30 s the first
time, to convert SmolLM2). The measurements alternate and an idle server uses no CPU, so the
server and the in-process model never compete for the cores; other work on the machine does,
so the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = "Write a short story about a robot who learns to paint."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny random model")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each measurement")
    parser.add_argument("--train-steps", type=int, default=6)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    if args.tiny:
        from graft.dataplane.smallmodels import build_tiny_model

        model_dir, model_name = build_tiny_model(work / "tiny"), "tiny random Llama (2 layers)"
    else:
        from graft.dataplane.smallmodels import smollm2_dir

        model_dir, model_name = smollm2_dir(), "SmolLM2-135M-Instruct (float32)"
    print(f"model: {model_name} at {model_dir}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    adapter, train_summary = train_adapter(model_dir, work, args.train_steps)
    steps_per_s = train_summary["steps"] / train_summary["train_seconds"]
    print(
        f"trainer: {train_summary['steps']} LoRA steps (batch 4, r=8, all-linear) in "
        f"{train_summary['train_seconds']:.1f} s = {steps_per_s:.2f} steps/s "
        f"({train_summary['tokens'] / train_summary['train_seconds']:.0f} tokens/s)"
    )

    prompt = chat_prompt(model_dir)
    server = start_server(model_dir, work / "serve.log")
    try:
        import httpx

        loads = []
        for i in range(args.repeats):
            started = time.perf_counter()
            response = httpx.post(
                f"{server}/v1/load_lora_adapter",
                json={"lora_name": f"bench-{i}", "lora_path": str(adapter)},
                timeout=120,
            )
            loads.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            httpx.post(
                f"{server}/v1/unload_lora_adapter", json={"lora_name": f"bench-{i}"}, timeout=60
            ).raise_for_status()
        print(
            "adapter hot-load over HTTP (ms): "
            + ", ".join(f"{ms:.0f}" for ms in loads)
            + f"  (median {statistics.median(loads):.0f})"
        )

        httpx.post(
            f"{server}/v1/load_lora_adapter",
            json={"lora_name": "bench", "lora_path": str(adapter)},
            timeout=120,
        ).raise_for_status()
        # Alternate the three measurements so that whatever else the machine is doing weighs on
        # all of them alike. An idle server uses no CPU: its worker thread waits on a queue.
        generate = plain_generate(model_dir, prompt, args.tokens)
        rates: dict[str, list[float]] = {"base": [], "bench": [], "plain": []}
        http_rate(server, "base", prompt, 4)  # warm-up
        for _ in range(args.repeats):
            rates["base"].append(http_rate(server, "base", prompt, args.tokens))
            rates["bench"].append(http_rate(server, "bench", prompt, args.tokens))
            rates["plain"].append(generate())
    finally:
        stop_server()

    base, with_adapter, plain = (statistics.median(rates[k]) for k in ("base", "bench", "plain"))
    how = f"median of {args.repeats}, {args.tokens} tokens each, greedy, same prompt"
    print(f"graft serve over HTTP, base model: {base:.1f} tokens/s ({how})")
    print(f"graft serve over HTTP, with adapter: {with_adapter:.1f} tokens/s")
    print(f"plain transformers generate, base model: {plain:.1f} tokens/s")
    print(f"ratio graft serve / generate (base model): {base / plain:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


def train_adapter(model_dir: Path, work: Path, steps: int) -> tuple[Path, dict[str, Any]]:
    dataset = work / "train.jsonl"
    with dataset.open("w") as f:
        for a in range(1, 41):
            messages = [
                {"role": "user", "content": f"What is {a} plus {a + 7}?"},
                {"role": "assistant", "content": f"{a} + {a + 7} = {2 * a + 7}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    output = work / "adapter"
    command = [sys.executable, "-m", "graft.cli", "train", "--base-model", str(model_dir)]
    command += ["--dataset", str(dataset), "--output", str(output), "--max-steps", str(steps)]
    command += ["--batch-size", "4", "--lora-rank", "8", "--learning-rate", "1e-3"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"graft train failed:\n{result.stderr}")
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return output, summary


def chat_prompt(model_dir: Path) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": QUESTION}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


_server: list[subprocess.Popen[bytes]] = []  # the one server this script starts


def start_server(model_dir: Path, log: Path) -> str:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "graft.cli", "serve", "--model", str(model_dir)]
    command += ["--served-model-name", "base", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--enable-lora", "--max-loras", "2", "--uvicorn-log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    _server.append(process)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"graft serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.3)
    stop_server()
    raise SystemExit("graft serve did not become ready")


def stop_server() -> None:
    for process in _server:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def http_rate(url: str, model: str, prompt: str, tokens: int) -> float:
    """Tokens/s of one non-streaming completion, timed by the client."""
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    body["ignore_eos"] = True  # always `tokens` tokens, like min_new_tokens below
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    generated: int = response.json()["usage"]["completion_tokens"]
    return generated / elapsed


def plain_generate(model_dir: Path, prompt: str, tokens: int) -> Callable[[], float]:
    """A function that runs transformers `generate` once and returns its tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        model.generate(**inputs, do_sample=False, max_new_tokens=4)  # warm-up

    def run() -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            out = model.generate(
                **inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens
            )
            elapsed = time.perf_counter() - started
        return float(out.shape[1] - prompt_len) / elapsed

    return run


if __name__ == "__main__":
    raise SystemExit(main())
