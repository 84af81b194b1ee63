"""Datasets: the validation result both sides agree on, the signature labels, the status (pure).

`graft dataset validate` (in the validation Job's pod) writes a `ValidationResult` as compact
JSON to its termination message; the Dataset reconciler reads it back from the pod's status.

The signature of a Dataset is (sha256 of the data, file name). Both are in status and in labels,
so a client can find a Dataset with the same data and name (`signature_selector()`) and reuse
it. Label values hold at most 63 characters: the sha256 label carries the first 63 of its 64 hex
digits (252 bits; the full digest is in status.sha256, which a client compares to be certain),
and a file name that is not a valid label value is replaced by `sha256-` and the first 56 hex
digits of the name's own SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from graft.api.common import Condition
from graft.api.training import DatasetSpec, DatasetStatus
from graft.core import keys
from graft.dataplane.termination import LIMIT
from graft.plan.jobs import JobState, Progress, lifecycle_conditions

MAX_ERRORS = 20
MAX_ERROR_LENGTH = 300
DEFAULT_FILENAME = "dataset.jsonl"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

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

    def to_message(self, limit: int = LIMIT) -> str:
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
            body["errors"] = [_shorten(e, MAX_ERROR_LENGTH) for e in self.errors[:MAX_ERRORS]]
        text = _compact(body)
        while len(text.encode()) > limit and body.get("errors"):
            body["errors"].pop()
            text = _compact(body)
        if len(text.encode()) > limit:  # only a huge message or file name can get here
            body.pop("message", None)
            body["filename"] = _shorten(str(body.get("filename", "")), 200)
            text = _compact(body)
        return text

    @classmethod
    def from_message(cls, text: str) -> ValidationResult | None:
        """The result in a termination message, or None when it holds something else (a
        traceback the kubelet took from the log, nothing at all)."""
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("status") not in ("valid", "invalid", "error"):
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
        """The problems as a message for a condition: a count, then one per line."""
        more = self.error_count - len(self.errors)
        head = f"{self.error_count} problem{'s' * (self.error_count != 1)} in {self.filename or 'the data'}"
        lines = [f"{head}:", *self.errors]
        if more > 0:
            lines.append(f"... and {more} more")
        return "\n".join(lines)


def _compact(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 3] + "..."


def _opt(body: dict[str, Any], key: str, type_: type[Any]) -> Any:
    value = body.get(key)
    return value if isinstance(value, type_) and not isinstance(value, bool) else None


# --- Signature ----------------------------------------------------------------------------------


def default_filename(spec: DatasetSpec) -> str:
    """spec.filename, else the last segment of the URI or the ConfigMap key."""
    if spec.filename:
        return spec.filename
    if spec.source.config_map is not None:
        return spec.source.config_map.key
    path = urlparse(spec.source.uri or "").path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or DEFAULT_FILENAME


def filename_label(filename: str) -> str:
    """The file name as a label value: itself when it is one, else `sha256-` + 56 hex digits."""
    if len(filename) <= 63 and _LABEL_VALUE.match(filename):
        return filename
    return "sha256-" + hashlib.sha256(filename.encode()).hexdigest()[:56]


def signature_labels(sha256: str, filename: str) -> dict[str, str]:
    return {keys.SHA256_PREFIX: sha256[:63], keys.FILENAME: filename_label(filename)}


def signature_selector(sha256: str, filename: str) -> str:
    """A label selector for Datasets with this data and file name (confirm with status.sha256)."""
    return ",".join(f"{k}={v}" for k, v in sorted(signature_labels(sha256, filename).items()))


# --- Status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetOutcome:
    """Where validation stands: the progress (condition) and the figures to report."""

    progress: Progress
    result: ValidationResult | None = None
    job_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


def validation_outcome(job_name: str, job: JobState, container: str) -> DatasetOutcome:
    """Map the validation Job's state and its pod's termination message to an outcome."""
    if job.phase in ("Pending", "Running"):
        detail = job.detail or "the validation pod is running"
        return DatasetOutcome(
            Progress.running("Validating", f"Job {job_name}: {detail}"), None, job_name
        )
    terminated = job.result
    text = terminated.message if terminated else ""
    result = ValidationResult.from_message(text) if terminated else None
    if job.phase == "Succeeded":
        if result is None or result.status != "valid" or not result.sha256:
            why = (
                "its pod left no result in its termination message"
                if not text.strip()
                else f"its result is unreadable: {_shorten(text, 300)}"
            )
            return DatasetOutcome(
                Progress.failed(
                    "ValidationResultMissing",
                    f"validation Job {job_name} succeeded but {why}; does its image run "
                    "`graft dataset validate`?",
                ),
                None,
                job_name,
            )
        message = (
            f"{result.example_count} {result.format or ''} examples, {result.size_bytes} bytes, "
            f"sha256 {result.sha256}"
        ).replace("  ", " ")
        return DatasetOutcome(
            Progress.succeeded("Validated", message),
            result,
            job_name,
            signature_labels(result.sha256, result.filename or ""),
        )
    # Failed
    if result is not None and result.status == "invalid":
        return DatasetOutcome(
            Progress.failed("InvalidDataset", result.describe_errors()), result, job_name
        )
    if result is not None and result.status == "error":
        return DatasetOutcome(
            Progress.failed("SourceUnreadable", result.message or job.detail), None, job_name
        )
    where = (
        f" ({terminated.container} exited with code {terminated.exit_code})" if terminated else ""
    )
    detail = text.strip() or job.detail or "no message"
    return DatasetOutcome(
        Progress.failed(
            "ValidationFailed",
            f"validation Job {job_name} failed{where}: {_shorten(detail, 2000)}",
        ),
        None,
        job_name,
    )


def dataset_status(
    *,
    generation: int,
    full_name: str,
    outcome: DatasetOutcome,
    previous: list[Condition],
    now: str,
) -> DatasetStatus:
    conditions, state = lifecycle_conditions(
        previous, outcome.progress, generation=generation, now=now, running_state="Validating"
    )
    result = outcome.result
    return DatasetStatus(
        observed_generation=generation,
        name=full_name,
        state=state,
        conditions=conditions,
        sha256=result.sha256 if result else None,
        size_bytes=result.size_bytes if result else None,
        example_count=result.example_count if result else None,
        filename=result.filename if result else None,
        errors=list(result.errors) if result and result.errors else None,
        job_name=outcome.job_name,
    )
