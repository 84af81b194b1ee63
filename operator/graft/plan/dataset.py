"""Datasets: what the validation Job's result means, the signature labels, the status (pure).

`graft dataset validate` (in the validation Job's pod) writes a `ValidationResult`
(graft.api.reports) as compact JSON to its termination message; the Dataset reconciler reads it
back from the pod's status and turns it into conditions here.

The signature of a Dataset is (sha256 of the data, file name). Both are in status and in labels
(graft.core.signatures, shared with the SDK), so a client can find a Dataset with the same data
and name (`signature_selector()`) and reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

from graft.api.common import Condition
from graft.api.reports import ValidationResult, shorten
from graft.api.training import DatasetSpec, DatasetStatus
from graft.core.signatures import signature_labels
from graft.plan.jobs import JobState, Progress, lifecycle_conditions

DEFAULT_FILENAME = "dataset.jsonl"

# --- Signature ----------------------------------------------------------------------------------


def default_filename(spec: DatasetSpec) -> str:
    """spec.filename, else the last segment of the URI or the ConfigMap key."""
    if spec.filename:
        return spec.filename
    if spec.source.config_map is not None:
        return spec.source.config_map.key
    path = urlparse(spec.source.uri or "").path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) or DEFAULT_FILENAME


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
                else f"its result is unreadable: {shorten(text, 300)}"
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
            f"validation Job {job_name} failed{where}: {shorten(detail, 2000)}",
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
