"""A training job's progress: one updating line in a terminal, throttled log lines elsewhere."""

from __future__ import annotations

from typing import Any

from graft.sdk.progress import ProgressPrinter, bar, describe, duration


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def progress(step: int, loss: float = 1.5, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "totalSteps": 40,
        "epoch": 1,
        "totalEpochs": 2,
        "loss": loss,
        "examplesPerSecond": 3.25,
        "etaSeconds": 65,
        "updatedAt": "2026-11-28T10:00:00Z",
        **extra,
    }


def test_describe() -> None:
    assert describe(None, with_bar=True) == ""
    assert describe(progress(10), with_bar=False) == (
        "step 10/40  epoch 1/2  loss 1.5000  3.2 ex/s  ETA 1m05s"
    )
    assert describe(progress(10), with_bar=True).startswith("[######..................] step")
    assert describe({"step": 3}, with_bar=True) == "step 3"
    assert describe({"epoch": 0.5, "loss": None, "etaSeconds": "x"}, with_bar=False) == (
        "epoch 0.5"
    )
    assert bar(50, 40, width=4) == "[####]"
    assert bar(0, 0, width=4) == "[....]"
    assert duration(3725) == "1h02m"
    assert duration(42) == "42s"
    assert duration(-1) == "0s"


def test_in_a_terminal_one_line_updates_in_place() -> None:
    stream = FakeStream(tty=True)
    printer = ProgressPrinter(stream, label="job", clock=Clock())
    printer.update("Pending")
    printer.update("Training", progress(1))
    printer.update("Training", progress(2, loss=1.2))
    printer.update("Training", progress(2, loss=1.2))  # nothing new: nothing written
    printer.update("Succeeded", progress(40, loss=0.5))
    printer.close()
    lines = stream.text.split("\n")
    assert lines[0] == "\rjob: Pending"
    # the training line was rewritten in place (carriage returns), not appended
    training = lines[1]
    assert training.count("\r") == 2
    assert "step 2/40" in training.split("\r")[-1]
    assert "[" in training
    assert lines[2].startswith("\rjob: Succeeded")
    assert "step 40/40" in lines[2]
    assert lines[3] == ""  # close() ends the line


def test_elsewhere_plain_lines_at_most_every_interval_and_at_every_phase_change() -> None:
    stream = FakeStream(tty=False)
    clock = Clock()
    printer = ProgressPrinter(stream, label="job", interval=5, clock=clock)
    printer.update("Pending")
    clock.now = 1
    printer.update("Training", progress(1))  # phase change: printed
    clock.now = 2
    printer.update("Training", progress(2))  # too soon: not printed
    clock.now = 7
    printer.update("Training", progress(3))  # due: printed
    clock.now = 20
    printer.update("Training", progress(3))  # due but unchanged: not printed
    clock.now = 21
    printer.update("Failed", progress(3))  # phase change: printed at once
    printer.close()
    lines = stream.text.splitlines()
    assert "\r" not in stream.text
    assert "[" not in stream.text  # no bar in a log
    assert lines == [
        "job: Pending",
        "job: Training  step 1/40  epoch 1/2  loss 1.5000  3.2 ex/s  ETA 1m05s",
        "job: Training  step 3/40  epoch 1/2  loss 1.5000  3.2 ex/s  ETA 1m05s",
        "job: Failed  step 3/40  epoch 1/2  loss 1.5000  3.2 ex/s  ETA 1m05s",
    ]


def test_a_status_without_progress_shows_the_phase() -> None:
    stream = FakeStream(tty=False)
    printer = ProgressPrinter(stream, clock=Clock())
    printer.update("Training", None)
    assert stream.text == "Training\n"
