"""Which tokens the trainer learns from (pure: a fake template and tokenizer, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from graft.api.dataformat import ChatExample, CompletionExample, Message
from graft.dataplane.train.encoding import (
    EncodedExample,
    TemplateError,
    assistant_spans,
    encode,
    mask_from_offsets,
    truncate,
)


def chatml(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    text = "".join(f"<s>{m.role}\n{m.content}</s>\n" for m in messages)
    return text + ("<s>assistant\n" if add_generation_prompt else "")


def char_tokens(text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """One token per character: token id = code point."""
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]


def trained_text(encoded: EncodedExample) -> str:
    return "".join(chr(t) for t, m in zip(encoded.input_ids, encoded.train_mask, strict=True) if m)


CONVERSATION = (
    Message("system", "S"),
    Message("user", "hi"),
    Message("assistant", "hello"),
    Message("user", "bye"),
    Message("assistant", "ciao"),
)


def test_assistant_spans_cover_each_reply_and_its_end_of_turn() -> None:
    text, spans = assistant_spans(CONVERSATION, chatml)
    assert [text[a:b] for a, b in spans] == ["hello</s>\n", "ciao</s>\n"]


def test_only_assistant_tokens_are_trained() -> None:
    encoded = encode(ChatExample(CONVERSATION, line=7), chatml, char_tokens, eos_token_id=None)
    assert encoded.line == 7
    assert "".join(chr(t) for t in encoded.input_ids) == chatml(CONVERSATION, False)
    assert trained_text(encoded) == "hello</s>\nciao</s>\n"
    assert encoded.trained_tokens == len("hello</s>\nciao</s>\n")


def test_completion_trains_on_completion_and_eos() -> None:
    encoded = encode(
        CompletionExample("Q: 1+1\nA:", " 2", line=1), chatml, char_tokens, eos_token_id=0
    )
    assert encoded.input_ids[-1] == 0
    assert encoded.train_mask[-1]
    assert (
        "".join(
            chr(t)
            for t, m in zip(encoded.input_ids[:-1], encoded.train_mask[:-1], strict=True)
            if m
        )
        == " 2"
    )


def test_mask_from_offsets_skips_zero_width_and_straddling_tokens() -> None:
    # tokens: [BOS (0,0)] "ab" (0,2) "cd" (2,4) "ef" (4,6); span is characters 3..6
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6)]
    assert mask_from_offsets(offsets, [(3, 6)]) == [False, False, False, True]
    assert mask_from_offsets(offsets, [(0, 2), (4, 6)]) == [False, True, False, True]


def test_template_that_does_not_grow_is_refused() -> None:
    def reordering(messages: Sequence[Message], add_generation_prompt: bool) -> str:
        # puts the last message first: renderings are not prefixes of each other
        return "".join(m.content for m in reversed(messages)) + (
            "|" if add_generation_prompt else ""
        )

    with pytest.raises(TemplateError, match="growing string"):
        assistant_spans((Message("user", "a"), Message("assistant", "b")), reordering)


def test_truncate_keeps_the_start() -> None:
    encoded = EncodedExample([1, 2, 3, 4], [False, True, True, True], line=1)
    assert truncate(encoded, 2) == EncodedExample([1, 2], [False, True], line=1)
    assert truncate(encoded, 10) is encoded
