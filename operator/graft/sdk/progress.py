"""A training job's progress, as a person watches it.

In a terminal: one line that updates in place (a step bar, the loss, examples/s and the ETA),
ended by a newline when the phase changes. Elsewhere (a CI log, a file): plain lines, at most
one every `interval` seconds while the numbers move, and one at every phase change, so a log
stays readable. The numbers come from the FineTuningJob's status.progress (wire fields step,
totalSteps, epoch, totalEpochs, loss, examplesPerSecond, etaSeconds, updatedAt); a status without
it (an older operator, a job not yet started) shows the phase alone.

The clock is passed in, so tests drive it without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

BAR_WIDTH = 24


class Stream(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def bar(step: float, total: float, width: int = BAR_WIDTH) -> str:
    filled = 0 if total <= 0 else min(width, int(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def describe(progress: Mapping[str, Any] | None, *, with_bar: bool) -> str:
    """The numbers of status.progress as one line ('' when there are none)."""
    if not progress:
        return ""
    parts = []
    step, total = _number(progress.get("step")), _number(progress.get("totalSteps"))
    if step is not None and total:
        lead = f"{bar(step, total)} " if with_bar else ""
        parts.append(f"{lead}step {int(step)}/{int(total)}")
    elif step is not None:
        parts.append(f"step {int(step)}")
    epoch, epochs = _number(progress.get("epoch")), _number(progress.get("totalEpochs"))
    if epoch is not None:
        shown = f"{epoch:g}" if epoch != int(epoch) else str(int(epoch))
        parts.append(f"epoch {shown}/{int(epochs)}" if epochs else f"epoch {shown}")
    loss = _number(progress.get("loss"))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    speed = _number(progress.get("examplesPerSecond"))
    if speed is not None:
        parts.append(f"{speed:.1f} ex/s")
    eta = _number(progress.get("etaSeconds"))
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return "  ".join(parts)


class ProgressPrinter:
    """Shows (phase, progress) updates on `stream`: in place in a TTY, throttled lines otherwise."""

    def __init__(
        self,
        stream: Stream,
        *,
        label: str = "",
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.interval = interval
        self.clock = clock
        try:
            self.tty = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._phase: str | None = None
        self._last_text: str | None = None
        self._last_time: float | None = None
        self._width = 0

    def _line(self, phase: str, progress: Mapping[str, Any] | None) -> str:
        numbers = describe(progress, with_bar=self.tty)
        head = f"{self.label}: {phase}" if self.label else phase
        return f"{head}  {numbers}" if numbers else head

    def update(self, phase: str, progress: Mapping[str, Any] | None = None) -> None:
        text = self._line(phase, progress)
        now = self.clock()
        changed_phase = phase != self._phase
        if self.tty:
            if changed_phase and self._phase is not None:
                self.stream.write("\n")
                self._width = 0
            if text != self._last_text or changed_phase:
                pad = " " * max(0, self._width - len(text))
                self.stream.write(f"\r{text}{pad}")
                self._width = len(text)
                self.stream.flush()
            self._last_text = text
        else:
            due = self._last_time is None or now - self._last_time >= self.interval
            if changed_phase or (due and text != self._last_text):
                self.stream.write(text + "\n")
                self.stream.flush()
                self._last_time = now
                self._last_text = text
        self._phase = phase

    def close(self) -> None:
        """End the in-place line (a TTY), so what follows starts on its own line."""
        if self.tty and self._last_text is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._last_text = None
