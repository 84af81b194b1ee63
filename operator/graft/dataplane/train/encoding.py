"""Which tokens of an example the model learns from: pure logic, no torch.

Chat examples are rendered with the model's own chat template. The loss covers only what the
assistant says: for each assistant message, the characters between the end of the conversation
rendered up to that message with the generation prompt (`...<|im_start|>assistant\\n`) and the
end of the conversation rendered up to and including it (content plus the end-of-turn marker,
so the model also learns to stop). Tokens are then mapped to those character spans through the
tokenizer's offsets, which works for any fast tokenizer and any template that renders a
conversation as a growing string.

Completion examples learn the completion (and the end-of-sequence token), not the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from graft.api.dataformat import ChatExample, CompletionExample, Example, Message

# (messages, add_generation_prompt) -> the conversation as the chat template renders it
RenderChat = Callable[[Sequence[Message], bool], str]
# text -> (token ids, (start, end) character offsets of each token; specials may be (0, 0))
TokenizeWithOffsets = Callable[[str], tuple[list[int], list[tuple[int, int]]]]

Span = tuple[int, int]


class TemplateError(ValueError):
    """The chat template does not render conversations in a way we can mask."""


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    train_mask: list[bool]  # True where the token is a target of the loss
    line: int

    @property
    def trained_tokens(self) -> int:
        return sum(self.train_mask)


def assistant_spans(messages: Sequence[Message], render: RenderChat) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = render(messages, False)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not full.startswith(before) or not full.startswith(through):
            raise TemplateError(
                "the model's chat template does not render a conversation as a growing string "
                f"(at message {i}), so the assistant tokens cannot be located"
            )
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans


def mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[bool]:
    """True for each token whose characters start inside one of the spans.

    Zero-width tokens (special tokens a tokenizer adds itself) are never trained; a token that
    straddles a span's start belongs to what precedes it.
    """
    mask: list[bool] = []
    for start, end in offsets:
        mask.append(end > start and any(lo <= start < hi for lo, hi in spans))
    return mask


def encode_chat(
    example: ChatExample, render: RenderChat, tokenize: TokenizeWithOffsets
) -> EncodedExample:
    text, spans = assistant_spans(example.messages, render)
    ids, offsets = tokenize(text)
    return EncodedExample(ids, mask_from_offsets(offsets, spans), example.line)


def encode_completion(
    example: CompletionExample, tokenize: TokenizeWithOffsets, eos_token_id: int | None
) -> EncodedExample:
    text = example.prompt + example.completion
    ids, offsets = tokenize(text)
    mask = mask_from_offsets(offsets, [(len(example.prompt), len(text))])
    if eos_token_id is not None:
        ids = [*ids, eos_token_id]
        mask = [*mask, True]
    return EncodedExample(ids, mask, example.line)


def encode(
    example: Example,
    render: RenderChat,
    tokenize: TokenizeWithOffsets,
    eos_token_id: int | None,
) -> EncodedExample:
    if isinstance(example, ChatExample):
        return encode_chat(example, render, tokenize)
    return encode_completion(example, tokenize, eos_token_id)


def truncate(example: EncodedExample, max_length: int) -> EncodedExample:
    """Keep the first `max_length` tokens (the start of a conversation gives the context)."""
    if len(example.input_ids) <= max_length:
        return example
    return EncodedExample(
        example.input_ids[:max_length], example.train_mask[:max_length], example.line
    )
