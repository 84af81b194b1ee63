"""Parsing and validation of chat and completion JSONL (pure: no torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from graft.dataplane.dataformat import (
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
    assert report.summary() == f"empty dataset: no examples ({why})"


def test_errors_are_capped_but_all_counted() -> None:
    report = parse_jsonl(b"not json\n" * 50, max_errors=20)
    assert report.error_count == 50
    assert len(report.errors) == 20
    assert [e.line for e in report.errors] == list(range(1, 21))
    assert report.summary().endswith("(and 49 more errors)")


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


def test_load_examples_raises_one_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{oops\n')
    with pytest.raises(DatasetError) as caught:
        load_examples(path)
    assert str(caught.value) == (
        f"invalid dataset {path}: line 1: no assistant message: nothing to learn from this "
        "example (and 1 more error)"
    )
    assert caught.value.report.error_count == 2
