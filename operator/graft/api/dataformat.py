"""Training data formats: parse and validate chat and completion JSONL.

Two formats, one JSON object per line (the same as the `Dataset` kind accepts):

- chat: ``{"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}``
- completion: ``{"prompt": "...", "completion": "..."}``

A file holds one format; it is decided by its first example. Blank lines are skipped. Every problem
is reported with its 1-based line number, so that a person can fix the whole file in one pass: the
report keeps the first 20 problems (all are counted), which `graft dataset validate` and `graft
train` both list, one a line, with `describe_problems()` (graft.api.reports). The result also
carries the file's sha256 and size so that `graft dataset validate` can report them.

Pure: no torch, no kopf, no kubernetes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from graft.api.reports import MAX_ERRORS, describe_problems

ROLES = ("system", "user", "assistant")
Role = Literal["system", "user", "assistant"]
Format = Literal["chat", "completion"]

DEFAULT_MAX_ERRORS = MAX_ERRORS


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]
    line: int


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str
    line: int


Example = ChatExample | CompletionExample


@dataclass(frozen=True)
class LineError:
    """A problem in the dataset. `line` is 1-based; None means the file as a whole."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


@dataclass
class DatasetReport:
    """The outcome of reading a dataset: its examples, its problems and its identity."""

    format: Format | None
    examples: list[Example]
    errors: list[LineError]
    error_count: int
    sha256: str
    size_bytes: int
    lines: int
    max_errors: int = DEFAULT_MAX_ERRORS

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_errors(self, errors: Sequence[LineError], *, first: bool = False) -> None:
        """Count problems and keep them while fewer than `max_errors` are kept; `first` puts
        them before the ones kept so far (they matter more: the file as a whole)."""
        self.error_count += len(errors)
        if first:
            self.errors[:0] = errors
            del self.errors[self.max_errors :]
        else:
            self.errors.extend(errors[: max(0, self.max_errors - len(self.errors))])

    def describe_errors(self, where: str, *, limit: int | None = None) -> str:
        """`N problems in WHERE:` and the kept problems, one a line (see describe_problems)."""
        return describe_problems(
            [str(e) for e in self.errors], self.error_count, where, limit=limit
        )


class DatasetError(ValueError):
    """The dataset cannot be used; `str()` lists every problem kept, one a line."""

    PREFIX = "invalid dataset: "

    def __init__(self, report: DatasetReport, source: str) -> None:
        self.report = report
        self.source = source
        super().__init__(self.describe())

    def describe(self, limit: int | None = None) -> str:
        """`invalid dataset: N problems in SOURCE:`, then the problems; with `limit` (UTF-8
        bytes, e.g. a termination message's), as many whole problems as fit."""
        room = None if limit is None else limit - len(self.PREFIX.encode())
        return self.PREFIX + self.report.describe_errors(self.source, limit=room)


def parse_jsonl(data: bytes, *, max_errors: int = DEFAULT_MAX_ERRORS) -> DatasetReport:
    """Parse a whole JSONL file held in memory. Keeps at most `max_errors` errors (all counted)."""
    return parse_lines(data.splitlines(keepends=True), max_errors=max_errors)


def read_dataset(path: str | Path, *, max_errors: int = DEFAULT_MAX_ERRORS) -> DatasetReport:
    """Read and validate a JSONL file. Raises OSError when the file cannot be read."""
    with open(path, "rb") as f:
        return parse_lines(f, max_errors=max_errors)


def load_examples(path: str | Path) -> list[Example]:
    """The examples of a valid dataset; raises DatasetError (its problems) otherwise."""
    report = read_dataset(path)
    if not report.ok:
        raise DatasetError(report, str(path))
    return report.examples


def parse_lines(lines: Iterable[bytes], *, max_errors: int = DEFAULT_MAX_ERRORS) -> DatasetReport:
    """Parse JSONL given as raw lines (with or without their line endings)."""
    digest = hashlib.sha256()
    report = DatasetReport(
        format=None,
        examples=[],
        errors=[],
        error_count=0,
        sha256="",
        size_bytes=0,
        lines=0,
        max_errors=max_errors,
    )
    first_format_line = 0
    for number, raw in enumerate(lines, start=1):
        digest.update(raw)
        report.size_bytes += len(raw)
        report.lines = number
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            _error(report, number, f"not valid UTF-8 (byte {exc.start})")
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            _error(report, number, f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        example, problem = parse_example(obj, number)
        if problem is not None:
            _error(report, number, problem)
            continue
        assert example is not None
        kind: Format = "chat" if isinstance(example, ChatExample) else "completion"
        if report.format is None:
            report.format = kind
            first_format_line = number
        elif kind != report.format:
            _error(
                report,
                number,
                f"{kind} example in a {report.format} dataset (line {first_format_line} is "
                f"{report.format}); a file holds one format",
            )
            continue
        report.examples.append(example)
    report.sha256 = digest.hexdigest()
    if not report.examples and report.error_count == 0:
        what = "the file is empty" if report.size_bytes == 0 else "it has only blank lines"
        _error(report, None, f"empty dataset: no examples ({what})")
    return report


def parse_example(obj: object, line: int) -> tuple[Example | None, str | None]:
    """One decoded JSON value → (example, None) or (None, problem)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {_json_type(obj)}"
    if "messages" in obj:
        return _chat_example(obj["messages"], line)
    if "prompt" in obj or "completion" in obj:
        return _completion_example(obj, line)
    keys = ", ".join(sorted(obj)) or "none"
    return None, (
        'missing fields: expected "messages" (chat) or "prompt" and "completion" '
        f"(completion); found keys: {keys}"
    )


def _chat_example(messages: object, line: int) -> tuple[Example | None, str | None]:
    if not isinstance(messages, list):
        return None, f'"messages" must be a list, got {_json_type(messages)}'
    if not messages:
        return None, '"messages" is empty'
    parsed: list[Message] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return None, f"{where} must be an object, got {_json_type(message)}"
        if "role" not in message:
            return None, f'{where} is missing field "role"'
        if "content" not in message:
            return None, f'{where} is missing field "content"'
        role = message["role"]
        if not isinstance(role, str) or role not in ROLES:
            expected = ", ".join(ROLES)
            return None, f"{where} has unknown role {json.dumps(role)}; expected one of: {expected}"
        content = message["content"]
        if not isinstance(content, str):
            return None, f'{where} "content" must be a string, got {_json_type(content)}'
        parsed.append(Message(role=cast(Role, role), content=content))
    if not any(m.role == "assistant" for m in parsed):
        return None, "no assistant message: nothing to learn from this example"
    return ChatExample(messages=tuple(parsed), line=line), None


def _completion_example(obj: dict[str, object], line: int) -> tuple[Example | None, str | None]:
    for key in ("prompt", "completion"):
        if key not in obj:
            return None, f'missing field "{key}" (completion format has "prompt" and "completion")'
        if not isinstance(obj[key], str):
            return None, f'"{key}" must be a string, got {_json_type(obj[key])}'
    prompt, completion = obj["prompt"], obj["completion"]
    assert isinstance(prompt, str)
    assert isinstance(completion, str)
    if not completion:
        return None, '"completion" is empty: nothing to learn from this example'
    return CompletionExample(prompt=prompt, completion=completion, line=line), None


def _error(report: DatasetReport, line: int | None, message: str) -> None:
    report.add_errors([LineError(line, message)])


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
