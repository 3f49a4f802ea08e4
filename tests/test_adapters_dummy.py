"""The dummy adapter: deterministic, word by word, honours max_tokens."""

from __future__ import annotations

import pytest

from llm_integration import exceptions as exc
from llm_integration.adapters import adapter_class
from llm_integration.adapters.dummy import DummyAdapter


async def test_answer_is_deterministic_and_streams_word_by_word():
    adapter = DummyAdapter(model="echo")
    answer = await adapter.complete("Hello there")
    assert answer.text == "This is the dummy model (echo). You said: Hello there"
    chunks = [c async for c in adapter.complete_stream("Hello there")]
    assert "".join(c.text for c in chunks) == answer.text
    assert len(chunks) == len(answer.text.split()) + 1
    assert chunks[-1].usage == answer.usage and chunks[-1].finish_reason == "stop"


async def test_max_tokens_truncates_with_length():
    answer = await DummyAdapter(model="echo").complete("Hello there", max_tokens=3)
    assert answer.text == "This is the" and answer.finish_reason == "length"


async def test_a_conversation_needs_a_user_message():
    with pytest.raises(exc.InvalidRequest):
        await DummyAdapter(model="echo").complete([{"role": "system", "content": "x"}])
    with pytest.raises(exc.InvalidRequest):
        await DummyAdapter(model="echo").complete([{"role": "robot", "content": "x"}])


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(exc.UnknownAdapterKind, match=r"'bogus'.*known kinds: anthropic, dummy"):
        adapter_class("bogus")
