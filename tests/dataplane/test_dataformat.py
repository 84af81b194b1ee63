"""Parsing and validation of chat and completion JSONL (pure: no torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from graft.api.dataformat import (
    ChatExample,
    CompletionExample,
    DatasetError,
    LineError,
    Message,
    load_examples,
    parse_jsonl,
    read_dataset,
)


def jsonl(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def chat(*pairs: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


def test_chat_examples_are_parsed_with_their_line_numbers() -> None:
    data = jsonl(
        chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")),
        chat(("user", "2+2?"), ("assistant", "4")),
    )
    report = parse_jsonl(data)
    assert report.ok
    assert report.format == "chat"
    assert report.examples == [
        ChatExample(
            messages=(
                Message("system", "Be brief."),
                Message("user", "Hi"),
                Message("assistant", "Hello"),
            ),
            line=1,
        ),
        ChatExample(messages=(Message("user", "2+2?"), Message("assistant", "4")), line=2),
    ]
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size_bytes == len(data)
    assert report.lines == 2


def test_completion_examples_blank_lines_and_crlf() -> None:
    data = b'{"prompt": "Q: 1+1\\nA:", "completion": " 2"}\r\n\r\n   \n{"prompt": "", "completion": "x"}'
    report = parse_jsonl(data)
    assert report.ok, report.errors
    assert report.format == "completion"
    assert report.examples == [
        CompletionExample(prompt="Q: 1+1\nA:", completion=" 2", line=1),
        CompletionExample(prompt="", completion="x", line=4),
    ]
    assert report.size_bytes == len(data)


def test_utf8_bom_on_first_line_is_accepted() -> None:
    report = parse_jsonl(b"\xef\xbb\xbf" + jsonl(chat(("user", "a"), ("assistant", "b"))))
    assert report.ok
    assert len(report.examples) == 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"messages": [', "malformed JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"text": "hi"}', 'missing fields: expected "messages" (chat)'),
        ('{"messages": "hi"}', '"messages" must be a list, got a string'),
        ('{"messages": []}', '"messages" is empty'),
        ('{"messages": [{"content": "x"}]}', 'messages[0] is missing field "role"'),
        ('{"messages": [{"role": "user"}]}', 'messages[0] is missing field "content"'),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}',
            'messages[1] has unknown role "robot"; expected one of: system, user, assistant',
        ),
        ('{"messages": [{"role": "user", "content": 3}]}', '"content" must be a string'),
        ('{"messages": [{"role": "user", "content": "a"}]}', "no assistant message"),
        ('{"prompt": "a"}', 'missing field "completion"'),
        ('{"completion": "a"}', 'missing field "prompt"'),
        ('{"prompt": "a", "completion": ""}', '"completion" is empty'),
        ('{"prompt": 1, "completion": "a"}', '"prompt" must be a string, got a number'),
    ],
)
def test_each_problem_is_reported_with_its_line(line: str, message: str) -> None:
    good = json.dumps(chat(("user", "a"), ("assistant", "b")))
    report = parse_jsonl(f"{good}\n{good}\n{line}\n".encode())
    assert not report.ok
    assert report.error_count == 1
    assert report.errors[0].line == 3
    assert message in report.errors[0].message
    assert str(report.errors[0]).startswith("line 3: ")
    assert len(report.examples) == 2  # the good lines are still parsed


def test_invalid_utf8_is_a_line_error() -> None:
    report = parse_jsonl(jsonl(chat(("user", "a"), ("assistant", "b"))) + b'{"prompt": "\xff"}\n')
    assert [(e.line, e.message) for e in report.errors] == [(2, "not valid UTF-8 (byte 12)")]


def test_mixed_formats_are_refused() -> None:
    report = parse_jsonl(
        jsonl(chat(("user", "a"), ("assistant", "b")), {"prompt": "p", "completion": "c"})
    )
    assert report.format == "chat"
    assert report.errors == [
        LineError(
            2, "completion example in a chat dataset (line 1 is chat); a file holds one format"
        )
    ]


@pytest.mark.parametrize(
    ("data", "why"), [(b"", "the file is empty"), (b"\n  \n\n", "it has only blank lines")]
)
def test_empty_dataset(data: bytes, why: str) -> None:
    report = parse_jsonl(data)
    assert not report.ok
    assert report.errors == [LineError(None, f"empty dataset: no examples ({why})")]
    assert report.describe_errors("e.jsonl") == (
        f"1 problem in e.jsonl:\nempty dataset: no examples ({why})"
    )


def test_errors_are_capped_but_all_counted() -> None:
    report = parse_jsonl(b"not json\n" * 50, max_errors=20)
    assert report.error_count == 50
    assert len(report.errors) == 20
    assert [e.line for e in report.errors] == list(range(1, 21))
    lines = report.describe_errors("d.jsonl").splitlines()
    assert lines[0] == "50 problems in d.jsonl:"
    assert lines[1:21] == [
        f"line {n}: malformed JSON: Expecting value (column 1)" for n in range(1, 21)
    ]
    assert lines[21:] == ["... and 30 more"]


def test_problems_that_concern_the_whole_file_can_come_first() -> None:
    report = parse_jsonl(b"not json\n" * 25)
    report.add_errors(
        [LineError(None, "too many examples"), LineError(1, "wrong format")], first=True
    )
    assert report.error_count == 27
    assert [str(e) for e in report.errors[:3]] == [
        "too many examples",
        "line 1: wrong format",
        "line 1: malformed JSON: Expecting value (column 1)",
    ]
    assert len(report.errors) == 20


def test_read_dataset_and_load_examples(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    data = jsonl(*[chat(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(30)])
    path.write_bytes(data)
    report = read_dataset(path)
    assert report.ok
    assert len(report.examples) == 30
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size_bytes == path.stat().st_size
    assert len(load_examples(path)) == 30


def test_load_examples_raises_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{oops\n')
    with pytest.raises(DatasetError) as caught:
        load_examples(path)
    assert str(caught.value) == (
        f"invalid dataset: 2 problems in {path}:\n"
        "line 1: no assistant message: nothing to learn from this example\n"
        "line 2: malformed JSON: Expecting property name enclosed in double quotes (column 2)"
    )
    assert caught.value.report.error_count == 2


def test_a_dataset_error_fits_a_limit_with_whole_problems() -> None:
    """As `graft train` writes it to its termination message (4096 bytes)."""
    long_key = "k" * 1000
    bad = json.dumps({long_key: 1}).encode() + b"\n"
    error = DatasetError(parse_jsonl(bad * 60), "/data/train.jsonl")
    full = str(error).splitlines()
    assert full[0] == "invalid dataset: 60 problems in /data/train.jsonl:"
    assert len(full) == 22  # the 20 kept, each cut to 300 characters, and the rest counted
    assert all(len(line) <= 300 for line in full[1:21])
    assert full[-1] == "... and 40 more"
    fitted = error.describe(1000)
    assert len(fitted.encode()) <= 1000
    lines = fitted.splitlines()
    assert lines[0] == full[0]
    assert 0 < len(lines) - 2 < 20
    assert lines[1:-1] == full[1 : len(lines) - 1]  # whole problems, in order
    assert lines[-1] == f"... and {60 - (len(lines) - 2)} more"
