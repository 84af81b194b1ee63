"""`graft train` reporting live progress, as the trainer Job runs it (`python -m graft.cli
train` with GRAFT_PROGRESS_URL and GRAFT_PROGRESS_TOKEN), to a real gateway on loopback whose
cluster is a StaticView (tests/harness/replicas.py); and training on when nobody listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dataplane_support import DatasetMaker

from graft.core.serverkeys import progress_token
from graft.gateway.catalog import build
from graft.gateway.progress import JobRecord
from graft.gateway.server import Settings
from harness.replicas import Loop, RunningGateway, StaticView

pytestmark = [pytest.mark.dataplane]


def graft_train(
    tiny_model: Path, dataset: Path, output: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "graft.cli", "train", "--base-model", str(tiny_model)]
    command += ["--dataset", str(dataset), "--output", str(output)]
    command += ["--max-steps", "30", "--batch-size", "4", "--epochs", "1"]
    return subprocess.run(
        command,
        env={**os.environ, **env, "GRAFT_TERMINATION_MESSAGE_PATH": str(output.parent / "term")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_progress_reaches_the_jobs_status_through_the_gateway(
    tiny_model: Path, tmp_path: Path, make_chat_dataset: DatasetMaker
) -> None:
    loop = Loop()
    view = StaticView(build(accounts=[], users=[], api_keys=[], models=[], deployments=[]), [], {})
    view.jobs["acme/tune"] = JobRecord("u1", "1", finished=False)
    gw = RunningGateway(loop, view, Settings())
    loop.run(gw.start())
    try:
        dataset = make_chat_dataset(tmp_path / "train.jsonl", "alpha alpha", n=10)
        token = progress_token(view.seed, "acme", "tune", "u1")
        env = {
            "GRAFT_PROGRESS_URL": f"{gw.url}/v1/internal/progress/acme/tune",
            "GRAFT_PROGRESS_TOKEN": token,
        }
        result = graft_train(tiny_model, dataset, tmp_path / "out", env)
        assert result.returncode == 0, result.stderr
        assert "progress report" not in result.stderr  # no failure was logged
        assert "step 30/30" in result.stderr  # the log lines are still there
        # The last report may be kept by the gateway for the rest of its 2 s interval.
        deadline = time.monotonic() + 30
        while not view.progress or view.progress[-1][1]["step"] != 30:
            assert time.monotonic() < deadline, f"no final report: {view.progress}"
            time.sleep(0.1)
        reports = [p for _, p in view.progress]
        steps = [r["step"] for r in reports]
        assert steps == sorted(steps)
        final = reports[-1]
        assert final["totalSteps"] == 30
        assert final["etaSeconds"] == 0
        assert final["epoch"] == final["totalEpochs"] == 10  # 3 batches of 10 examples an epoch
        assert final["loss"] > 0
        assert final["examplesPerSecond"] > 0
        curve = final["lossCurve"]  # every step's loss (30 steps: no sampling yet)
        assert [p[0] for p in curve] == list(range(1, 31))
        assert curve[-1][1] == pytest.approx(final["loss"], abs=1e-4)
    finally:
        loop.run(gw.stop())
        loop.close()


def test_training_goes_on_when_the_gateway_is_unreachable(
    tiny_model: Path, tmp_path: Path, make_chat_dataset: DatasetMaker
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dataset = make_chat_dataset(tmp_path / "train.jsonl", "alpha alpha", n=10)
    env = {
        "GRAFT_PROGRESS_URL": f"http://127.0.0.1:{port}/v1/internal/progress/acme/tune",
        "GRAFT_PROGRESS_TOKEN": "graft-progress-x",
    }
    result = graft_train(tiny_model, dataset, tmp_path / "out", env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("progress report to") == 1
    assert "ConnectionRefusedError" in result.stderr
    assert (tmp_path / "out" / "adapter_config.json").is_file()
