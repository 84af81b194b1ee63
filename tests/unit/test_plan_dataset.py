"""The validation result both sides share, the signature labels, and the Dataset status."""

from __future__ import annotations

import hashlib
import json

from graft.api.reports import ValidationResult, describe_problems
from graft.api.training import DatasetSpec
from graft.core.signatures import filename_label, signature_labels, signature_selector
from graft.plan.dataset import dataset_status, default_filename, validation_outcome
from graft.plan.jobs import JobState, Terminated

SHA = hashlib.sha256(b"data").hexdigest()


def test_result_round_trips_through_a_termination_message() -> None:
    result = ValidationResult(
        status="invalid",
        sha256=SHA,
        size_bytes=10,
        example_count=2,
        filename="a.jsonl",
        format="chat",
        errors=("line 2: malformed JSON", "too few examples"),
        error_count=2,
    )
    text = result.to_message()
    assert "\n" not in text
    assert '": ' not in text  # compact
    assert ValidationResult.from_message(text) == result


def test_result_fits_the_termination_message_limit() -> None:
    errors = tuple(f"line {i}: " + "x" * 400 for i in range(1, 21))
    result = ValidationResult(
        status="invalid", sha256=SHA, filename="a.jsonl", errors=errors, error_count=5000
    )
    text = result.to_message()
    assert len(text.encode()) <= 4096
    back = ValidationResult.from_message(text)
    assert back is not None
    assert back.error_count == 5000
    assert 0 < len(back.errors) < 20
    assert all(len(e) <= 300 for e in back.errors)
    assert back.errors[0].startswith("line 1: xxx")
    assert "... and" in back.describe_errors()


def test_problems_are_listed_one_a_line_up_to_the_limit() -> None:
    three = ["line 3: malformed JSON", "line 5: bad\nrole", "line 7: no  assistant"]
    assert describe_problems(three, 3, "data.jsonl") == (
        "3 problems in data.jsonl:\n"
        "line 3: malformed JSON\n"
        "line 5: bad role\n"  # one problem, one line
        "line 7: no assistant"
    )
    assert describe_problems(three[:1], 1, "d") == "1 problem in d:\nline 3: malformed JSON"
    many = [f"line {n}: " + "x" * 400 for n in range(1, 31)]
    lines = describe_problems(many, 5000, "d").splitlines()
    assert lines[0] == "5000 problems in d:"
    assert [line.split(":")[0] for line in lines[1:21]] == [f"line {n}" for n in range(1, 21)]
    assert all(len(line) == 300 and line.endswith("...") for line in lines[1:21])
    assert lines[21:] == ["... and 4980 more"]


def test_problems_fit_a_byte_limit_whole() -> None:
    many = [f"line {n}: " + "é" * 250 for n in range(1, 21)]
    text = describe_problems(many, 20, "d", limit=2000)
    assert len(text.encode()) <= 2000
    lines = text.splitlines()
    listed = len(lines) - 2
    assert 0 < listed < 20
    assert lines[1 : 1 + listed] == many[:listed]
    assert lines[-1] == f"... and {20 - listed} more"
    assert describe_problems(many[:2], 2, "d", limit=10_000).splitlines()[1:] == many[:2]
    tiny = describe_problems(many, 20, "/a/very/long/path" * 10, limit=50)
    assert len(tiny.encode()) <= 50
    assert tiny.endswith("...")


def test_other_messages_are_not_results() -> None:
    assert ValidationResult.from_message("") is None
    assert ValidationResult.from_message("Traceback (most recent call last):") is None
    assert ValidationResult.from_message('{"status": "succeeded"}') is None
    assert ValidationResult.from_message("[1, 2]") is None


def test_filename_defaults() -> None:
    def spec(**kw: object) -> DatasetSpec:
        return DatasetSpec.model_validate(kw)

    assert default_filename(spec(source={"uri": "s3://b/dir/train%201.jsonl"})) == "train 1.jsonl"
    assert default_filename(spec(source={"uri": "https://h/x/"})) == "x"
    assert (
        default_filename(spec(source={"configMap": {"name": "c", "key": "k.jsonl"}})) == "k.jsonl"
    )
    assert default_filename(spec(source={"uri": "file:///a.jsonl"}, filename="mine")) == "mine"


def test_signature_labels() -> None:
    assert filename_label("train.jsonl") == "train.jsonl"
    odd = "My data (v2).jsonl"
    label = filename_label(odd)
    assert label == "sha256-" + hashlib.sha256(odd.encode()).hexdigest()[:56]
    assert len(label) == 63
    assert filename_label("x" * 64).startswith("sha256-")
    labels = signature_labels(SHA, "train.jsonl")
    assert labels == {"graft.dev/sha256-prefix": SHA[:63], "graft.dev/filename": "train.jsonl"}
    assert signature_selector(SHA, "train.jsonl") == (
        f"graft.dev/filename=train.jsonl,graft.dev/sha256-prefix={SHA[:63]}"
    )


def terminated(message: str, code: int = 0) -> Terminated:
    return Terminated(container="validate", exit_code=code, reason="", message=message)


def test_outcomes() -> None:
    valid = ValidationResult(
        status="valid", sha256=SHA, size_bytes=4, example_count=3, filename="a.jsonl", format="chat"
    )
    ok = validation_outcome(
        "a-validate", JobState("Succeeded", result=terminated(valid.to_message())), "validate"
    )
    assert (ok.progress.kind, ok.progress.reason) == ("succeeded", "Validated")
    assert ok.progress.message == f"3 chat examples, 4 bytes, sha256 {SHA}"
    assert ok.labels == signature_labels(SHA, "a.jsonl")

    invalid = ValidationResult(
        status="invalid",
        sha256=SHA,
        filename="a.jsonl",
        errors=("line 2: malformed JSON",),
        error_count=1,
    )
    bad = validation_outcome(
        "a-validate", JobState("Failed", result=terminated(invalid.to_message(), 1)), "validate"
    )
    assert (bad.progress.kind, bad.progress.reason) == ("failed", "InvalidDataset")
    assert bad.progress.message == "1 problem in a.jsonl:\nline 2: malformed JSON"
    assert not bad.labels

    unreadable = ValidationResult(status="error", message="cannot read x: no such file")
    gone = validation_outcome(
        "a-validate", JobState("Failed", result=terminated(unreadable.to_message(), 1)), "validate"
    )
    assert (gone.progress.reason, gone.progress.message) == (
        "SourceUnreadable",
        "cannot read x: no such file",
    )

    crashed = validation_outcome(
        "a-validate",
        JobState("Failed", detail="BackoffLimitExceeded", result=terminated("Traceback: boom", 3)),
        "validate",
    )
    assert crashed.progress.reason == "ValidationFailed"
    assert "validate exited with code 3" in crashed.progress.message
    assert "Traceback: boom" in crashed.progress.message

    silent = validation_outcome(
        "a-validate", JobState("Succeeded", result=terminated("")), "validate"
    )
    assert silent.progress.reason == "ValidationResultMissing"
    assert silent.progress.kind == "failed"

    running = validation_outcome(
        "a-validate", JobState("Running", detail="pod p is running"), "validate"
    )
    assert (running.progress.kind, running.progress.message) == (
        "running",
        "Job a-validate: pod p is running",
    )


def test_status_carries_the_figures() -> None:
    result = ValidationResult(
        status="valid", sha256=SHA, size_bytes=4, example_count=3, filename="a.jsonl", format="chat"
    )
    outcome = validation_outcome(
        "a-validate", JobState("Succeeded", result=terminated(result.to_message())), "validate"
    )
    status = dataset_status(
        generation=1, full_name="accounts/x/datasets/a", outcome=outcome, previous=[], now="t"
    ).wire()
    assert status["state"] == "Ready"
    assert (status["sha256"], status["sizeBytes"], status["exampleCount"], status["filename"]) == (
        SHA,
        4,
        3,
        "a.jsonl",
    )
    assert status["jobName"] == "a-validate"
    assert "errors" not in status
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Succeeded"]
    assert json.dumps(status)  # plain JSON, ready for a status patch
