"""Text from elsewhere (an upstream's answer, a client's JSON) that every surface can
encode: no lone UTF-16 surrogate (JSON's ``"\\ud800"``) survives; each becomes U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: A JSON escape of a surrogate, or a surrogate's UTF-8 bytes (which ``json.loads``
#: lets through): only then is a parsed answer walked for lone surrogates.
SURROGATE_IN_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
SURROGATE_IN_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


def clean(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (a split pair is joined)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def repaired(value: Any) -> Any:
    """A parsed JSON value with every string (keys included) ``clean``."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: repaired(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repaired(v) for v in value]
    return value


def loads(raw: bytes | str) -> Any:
    """``json.loads``, its strings free of lone surrogates (walked only when the text
    holds a surrogate at all, which ordinary answers do not)."""
    data = json.loads(raw)
    hint = SURROGATE_IN_BYTES if isinstance(raw, bytes | bytearray) else SURROGATE_IN_TEXT
    if hint.search(raw):
        data = repaired(data)
    return data
