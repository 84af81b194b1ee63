"""What the programs in Graft's Job pods report back to the operator (pure wire contracts).

A Job's container writes one compact JSON object to its termination message
(`terminationMessagePath`), which the kubelet copies into the pod's status, keeping at most
`TERMINATION_MESSAGE_LIMIT` bytes; the operator reads it back from there. Both sides use the
classes below, so what one writes the other reads:

- `ValidationResult`: `graft dataset validate` -> the Dataset reconciler;
- `TrainerSummary`: `graft train` -> the FineTuningJob reconciler (on failure the trainer writes
  its reason as text instead, which the operator shows as it is: for a malformed dataset,
  `describe_problems()` below, as the Dataset reconciler shows a `ValidationResult`'s errors);
- `InspectionResult`: `graft model inspect` -> the Model reconciler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of a container's termination message."""

MAX_ERRORS = 20
"""At most this many problems of a dataset are listed (all are counted)."""
MAX_ERROR_LENGTH = 300
"""A listed problem is cut to this many characters."""

Status = Literal["valid", "invalid", "error"]


@dataclass(frozen=True)
class ValidationResult:
    """What `graft dataset validate` found.

    valid: the figures; invalid: the figures known so far and the problems (line-numbered where
    they belong to a line); error: the data could not be read at all (`message` says why).
    """

    status: Status
    sha256: str | None = None
    size_bytes: int | None = None
    example_count: int | None = None
    filename: str | None = None
    format: str | None = None
    errors: tuple[str, ...] = ()
    error_count: int = 0
    message: str = ""

    def to_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON that fits a termination message: errors are shortened, then dropped
        from the end (error_count still counts them all)."""
        body: dict[str, Any] = {"status": self.status}
        for key, value in (
            ("sha256", self.sha256),
            ("sizeBytes", self.size_bytes),
            ("exampleCount", self.example_count),
            ("filename", self.filename),
            ("format", self.format),
        ):
            if value is not None:
                body[key] = value
        if self.status == "error":
            body["message"] = self.message
        if self.errors or self.error_count:
            body["errorCount"] = max(self.error_count, len(self.errors))
            body["errors"] = [shorten(e, MAX_ERROR_LENGTH) for e in self.errors[:MAX_ERRORS]]
        text = _compact(body)
        while len(text.encode()) > limit and body.get("errors"):
            body["errors"].pop()
            text = _compact(body)
        if len(text.encode()) > limit:  # only a huge message or file name can get here
            body.pop("message", None)
            body["filename"] = shorten(str(body.get("filename", "")), 200)
            text = _compact(body)
        return text

    @classmethod
    def from_message(cls, text: str) -> ValidationResult | None:
        """The result in a termination message, or None when it holds something else (a
        traceback the kubelet took from the log, nothing at all)."""
        body = _result_body(text)
        if body is None:
            return None
        errors = body.get("errors") or []
        return cls(
            status=body["status"],
            sha256=_opt(body, "sha256", str),
            size_bytes=_opt(body, "sizeBytes", int),
            example_count=_opt(body, "exampleCount", int),
            filename=_opt(body, "filename", str),
            format=_opt(body, "format", str),
            errors=tuple(str(e) for e in errors if isinstance(e, str)),
            error_count=int(body.get("errorCount") or len(errors)),
            message=str(body.get("message") or ""),
        )

    def describe_errors(self) -> str:
        """The problems as a message for a condition (see `describe_problems`)."""
        return describe_problems(self.errors, self.error_count, self.filename or "the data")


def describe_problems(
    problems: Sequence[str], count: int, where: str, *, limit: int | None = None
) -> str:
    """A dataset's problems as a person reads them, in a Dataset's or FineTuningJob's condition,
    `graft dataset validate`'s and `graft train`'s stderr, and `graft train`'s termination
    message: `N problems in WHERE:`, then one problem a line (at most MAX_ERRORS, each on one
    line of at most MAX_ERROR_LENGTH characters), then `... and K more` for those counted but
    not listed.

    With `limit` (UTF-8 bytes), whole problems are dropped from the end, and counted in K, until
    the text fits; only a `where` too long for the limit is cut itself.
    """
    count = max(count, len(problems))
    shown = [shorten(" ".join(p.split()), MAX_ERROR_LENGTH) for p in problems[:MAX_ERRORS]]
    head = f"{count} problem{'s' * (count != 1)} in {where}:"

    def text(listed: int) -> str:
        more = count - listed
        return "\n".join([head, *shown[:listed], *([f"... and {more} more"] if more else [])])

    listed = len(shown)
    message = text(listed)
    if limit is None:
        return message
    while listed and len(message.encode()) > limit:
        listed -= 1
        message = text(listed)
    return clip(message, limit)


def _result_body(text: str) -> dict[str, Any] | None:
    """The JSON object of a result with a valid/invalid/error status, or None when the text is
    something else (a traceback the kubelet took from the log, nothing at all)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("status") not in ("valid", "invalid", "error"):
        return None
    return body


def _compact(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def shorten(text: str, length: int) -> str:
    """`text` cut to `length` characters, ending in "..." when it was cut."""
    return text if len(text) <= length else text[: length - 3] + "..."


def clip(message: str, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` UTF-8 bytes, ending in "..." when it was cut."""
    data = message.encode("utf-8")
    if len(data) <= limit:
        return message
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def _opt(body: dict[str, Any], key: str, type_: type[Any]) -> Any:
    value = body.get(key)
    return value if isinstance(value, type_) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class TrainerSummary:
    """What `graft train` reports when the adapter is written: the figures the FineTuningJob's
    status shows (`final_loss`, `steps`, `output`) and, in `details`, everything else it
    measured (examples, tokens, first loss, hyperparameters, times), which the message carries
    and logs show but equality ignores."""

    final_loss: float | None
    steps: int | None
    output: str | None
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_message(self) -> str:
        """One JSON line with sorted keys, as `graft train` prints it and writes it to its
        termination message."""
        body = {
            **self.details,
            "status": "succeeded",
            "final_loss": self.final_loss,
            "steps": self.steps,
            "output": self.output,
        }
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_message(cls, text: str) -> TrainerSummary | None:
        """The summary in a termination message, or None when it holds something else (the
        trainer's failure reason, a log tail)."""
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("status") != "succeeded":
            return None
        loss, steps, output = body.get("final_loss"), body.get("steps"), body.get("output")
        details = {
            k: v for k, v in body.items() if k not in ("status", "final_loss", "steps", "output")
        }
        return cls(
            final_loss=float(loss) if isinstance(loss, int | float) else None,
            steps=steps if isinstance(steps, int) else None,
            output=output if isinstance(output, str) else None,
            details=details,
        )


MAX_TARGET_MODULES = 64


@dataclass(frozen=True)
class InspectionResult:
    """What `graft model inspect` read from an addon's adapter_config.json.

    valid: the LoRA rank and the target modules; invalid: the file was read but is not a usable
    adapter config; error: it could not be read at all. `message` says why for both.
    """

    status: Status
    lora_rank: int | None = None
    target_modules: tuple[str, ...] = ()
    message: str = ""

    def to_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON that fits a termination message (a long message and module list are
        shortened; the status and rank always fit)."""
        body: dict[str, Any] = {"status": self.status}
        if self.lora_rank is not None:
            body["loraRank"] = self.lora_rank
        if self.target_modules:
            body["targetModules"] = [shorten(m, 200) for m in self.target_modules][
                :MAX_TARGET_MODULES
            ]
        if self.message:
            body["message"] = shorten(self.message, 2000)
        text = _compact(body)
        while len(text.encode()) > limit and body.get("targetModules"):
            body["targetModules"].pop()
            text = _compact(body)
        return text

    @classmethod
    def from_message(cls, text: str) -> InspectionResult | None:
        """The result in a termination message, or None when it holds something else."""
        body = _result_body(text)
        if body is None:
            return None
        modules = body.get("targetModules") or []
        return cls(
            status=body["status"],
            lora_rank=_opt(body, "loraRank", int),
            target_modules=tuple(str(m) for m in modules if isinstance(m, str)),
            message=str(body.get("message") or ""),
        )
