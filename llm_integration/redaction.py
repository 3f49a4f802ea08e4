"""Provider keys never leave the gateway, whole or in pieces.

Every key the gateway sends upstream (a provider's API key, a header value read from
a secret) is registered here when its adapter is built. ``scrub(text)`` cuts every run
of 8 or more characters taken from any registered key out of ``text``: each key's
8-character pieces are kept in a set and looked up at every position of the text, and
any run of 8+ key characters starts with such a piece, so no elision, quoting or cut of
the key gets a piece through. Upstream error text passes through here before it reaches
a client or a log (``UpstreamError`` scrubs its message). Keys shorter than 8
characters are placeholders, not secrets, and are left alone.

``redact_secret`` adds what a scrub cannot know: key-shaped words of other keys (an
upstream quoting ``sk-…`` of some other account) and short pieces around an elision.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable

#: The shortest piece of a key that is cut out.
MIN_PIECE = 8
REDACTED = "[redacted]"


class KeyScrubber:
    """The registered keys, and ``scrub`` over them."""

    def __init__(self) -> None:
        self._keys: frozenset[str] = frozenset()
        self._pieces: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, secrets: Iterable[str | None]) -> None:
        """Add keys. One shorter than ``MIN_PIECE`` is no secret to scrub (placeholders
        such as ``ollama`` or ``EMPTY``: cutting them would mangle every message)."""
        new = {s for s in secrets if s and len(s) >= MIN_PIECE} - self._keys
        if not new:
            return
        with self._lock:
            keys = self._keys | new
            self._pieces = frozenset(
                key[i : i + MIN_PIECE] for key in keys for i in range(len(key) - MIN_PIECE + 1)
            )
            self._keys = keys

    def scrub(self, text: str) -> str:
        """``text`` with every run of 8+ characters of a registered key replaced by
        ``[redacted]``; invisible format characters (a zero-width space between the
        key's characters) are dropped first, as a reader would not see them."""
        pieces = self._pieces
        if not pieces or len(text) < MIN_PIECE:
            return text
        if not text.isascii():
            text = "".join(c for c in text if unicodedata.category(c) != "Cf")
        spans: list[list[int]] = []
        for i in range(len(text) - MIN_PIECE + 1):
            if text[i : i + MIN_PIECE] in pieces:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + MIN_PIECE
                else:
                    spans.append([i, i + MIN_PIECE])
        if not spans:
            return text
        out, at = [], 0
        for start, end in spans:
            out += [text[at:start], REDACTED]
            at = end
        out.append(text[at:])
        return "".join(out)

    def clear(self) -> None:
        with self._lock:
            self._keys, self._pieces = frozenset(), frozenset()


#: The process's registered keys.
keys = KeyScrubber()


def scrub(text: str) -> str:
    return keys.scrub(text)


#: Words that could be a key or part of one: elided ("sk-CANAR...3456", "sk-****abcd")
#: or long unbroken runs of key characters.
KEY_LIKE = re.compile(r"[\w\-]*(?:\.{2,}|\*{2,}|…)[\w\-]*|[\w\-]{20,}")
ELISION = re.compile(r"\.{2,}|\*{2,}|…")
KEY_PREFIXES = ("sk-", "sk_", "pk-", "rk-", "key-", "gsk_", "xai-", "AIza")


def redact_secret(text: str, key: str | None) -> str:
    """``text`` scrubbed of the registered keys and ``key``, without words that repeat
    ``key``'s start (5 characters or more) or its end (4 or more) around an elision,
    and without key-shaped words (an upstream may quote part of a key,
    ``(partial sk-CANAR...3456)``, or another one)."""
    if key:
        keys.register([key])
        if len(key) < MIN_PIECE:
            text = text.replace(key, REDACTED)  # this adapter's own, however short
    text = scrub(text)

    def mask(match: re.Match) -> str:
        word = match.group(0)
        pieces = ELISION.split(word)
        head, tail = pieces[0], pieces[-1]
        if word.startswith(KEY_PREFIXES):
            return REDACTED
        if key and (
            (len(head) >= 5 and key.startswith(head)) or (len(tail) >= 4 and key.endswith(tail))
        ):
            return REDACTED
        return word

    return KEY_LIKE.sub(mask, text)
