"""Helpers shared by the data-plane tests and their fixtures (imported by name: this directory
is on sys.path, see conftest.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_NAME = "accounts/acme/models/tiny-base"
ALPHA = "accounts/acme/models/alpha"
BRAVO = "accounts/acme/models/bravo"
QUESTIONS = [f"What is {a} plus {b}?" for a, b in zip(range(1, 51), range(7, 57), strict=True)]

TrainRunner = Callable[[list[str], Path], tuple[int, "dict[str, Any] | None", str]]
DatasetMaker = Callable[..., Path]


def chat_dataset(path: Path, answer: str, n: int = 50, system_every: int = 1) -> Path:
    """`n` chat examples whose assistant always answers `answer`; every `system_every`-th one
    (from the first) has the system message "Be brief.", the others none."""
    with path.open("w") as f:
        for i, question in enumerate(QUESTIONS[:n]):
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            if i % system_every == 0:
                messages.insert(0, {"role": "system", "content": "Be brief."})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def train(argv: list[str], termination: Path) -> tuple[int, dict[str, Any] | None, str]:
    """Run `graft train` in this process; (exit code, summary or None, termination message)."""
    from graft.dataplane.train import main

    code = main([*argv, "--termination-message-path", str(termination)])
    message = termination.read_text() if termination.exists() else ""
    summary = json.loads(message) if code == 0 else None
    return code, summary, message


def train_tiny_adapter(tiny_model: Path, workdir: Path, answer: str, seed: int) -> Path:
    """An adapter that makes the tiny model answer `answer` to any question, with or without a
    system message (the tests ask both ways).

    Margins, not luck: 100 steps of training on questions that always had a system message
    left the tiny random model one typo or one word short on some CPUs ("chaarlie chrlih...",
    "alpha" for "alpha alpha alpha") and without a system message. Half the examples without
    one and 300 steps bring the loss to about 0.005, and the greedy answer was the same with 1
    and 2 threads and for seeds 1-3 (measured with both prompt forms; ~15 s per adapter).
    """
    dataset = chat_dataset(workdir / f"{answer.split(maxsplit=1)[0]}.jsonl", answer, system_every=2)
    output = workdir / f"adapter-{answer.split(maxsplit=1)[0]}"
    code, _, message = train(
        [
            "--base-model",
            str(tiny_model),
            "--dataset",
            str(dataset),
            "--output",
            str(output),
            "--max-steps",
            "300",
            "--learning-rate",
            "1e-2",
            "--batch-size",
            "8",
            "--lora-rank",
            "8",
            "--seed",
            str(seed),
        ],
        workdir / f"termination-{seed}",
    )
    assert code == 0, message
    return output


@dataclass(frozen=True)
class Adapters:
    alpha: Path
    bravo: Path
    charlie: Path  # not loaded at server start: for load/unload tests
    rank16: Path  # LoRA rank 16, above the server's --max-lora-rank 8


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`graft serve` in a subprocess, as the operator starts it in a model-server pod."""

    def __init__(self, args: list[str], log: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "graft.cli", "serve", *args]
        command += ["--host", host, "--port", str(self.port), "--uvicorn-log-level", "warning"]
        self.command = command
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> Server:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"graft serve exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"graft serve not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
