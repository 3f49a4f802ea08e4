"""No piece of a registered key (8 characters or more) survives ``scrub``, however it
is cut, quoted or surrounded; text without such a piece is left as it is."""

from __future__ import annotations

import random
import string

import pytest

from llm_integration.exceptions import UpstreamBadRequest
from llm_integration.redaction import MIN_PIECE, REDACTED, KeyScrubber, keys

KEY = "sk-proj-Zq8Xw3Lr9Tn2Vb7Kc4Mj6Hy1Gd5Fs0Pa"


@pytest.fixture
def scrubber() -> KeyScrubber:
    s = KeyScrubber()
    s.register([KEY, None, ""])
    return s


def leaks(text: str, key: str = KEY) -> list[str]:
    return [
        key[i : i + MIN_PIECE]
        for i in range(len(key) - MIN_PIECE + 1)
        if key[i : i + MIN_PIECE] in text
    ]


def test_every_piece_of_every_length_is_cut(scrubber):
    for size in range(MIN_PIECE, len(KEY) + 1):
        for start in range(len(KEY) - size + 1):
            piece = KEY[start : start + size]
            text = f"upstream says: bad key ({piece}) for org 42"
            scrubbed = scrubber.scrub(text)
            assert not leaks(scrubbed), (piece, scrubbed)
            assert scrubbed.startswith("upstream says: bad key (") and "for org 42" in scrubbed


def test_pieces_that_touch_or_overlap_are_cut_as_one(scrubber):
    text = f"{KEY[0:12]}{KEY[20:30]} and {KEY[5:15]}…{KEY[-8:]}"
    scrubbed = scrubber.scrub(text)
    assert not leaks(scrubbed) and scrubbed.count(REDACTED) >= 2


def test_text_without_a_piece_is_unchanged(scrubber):
    rng = random.Random(7)  # a fixed seed: the same texts every run
    for _ in range(200):
        text = "".join(rng.choice(string.ascii_letters + " -_.") for _ in range(rng.randint(0, 80)))
        if not leaks(text):
            assert scrubber.scrub(text) == text
    assert scrubber.scrub(KEY[:7] + " and " + KEY[-7:]) == KEY[:7] + " and " + KEY[-7:]


def test_short_placeholders_are_no_secrets():
    s = KeyScrubber()
    s.register(["none", "ollama", "EMPTY"])
    assert s.scrub("nonexistent model for ollama: EMPTY") == "nonexistent model for ollama: EMPTY"


def test_an_upstream_error_never_carries_a_registered_key_piece():
    keys.register([KEY])
    error = UpstreamBadRequest(f"rejected: key fragment {KEY[9:21]}", provider="p")
    assert not leaks(error.message) and not leaks(str(error))
