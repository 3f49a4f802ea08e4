"""Request body parsing for the API: DRF's JSON parser, with every way a body can fail
to be JSON text answered as a 400.

Two that DRF's parser lets through: JSON nested deeper than Python's recursion limit
(``RecursionError``, a 500), and a lone UTF-16 surrogate written as an escape
(``"\\ud800"``): valid JSON, but no UTF-8 text can carry it, so any field name, role or
error message echoing it would fail to render. Such a body is refused here, before any
view sees it, naming where the surrogate is.
"""

from __future__ import annotations

import codecs
import io
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from ..envelope import SURROGATE

#: The escape of a surrogate code unit: one fast scan of every body, rarely a match.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: JSON's escapes from left to right (``\\\\ud800`` is an escaped backslash, then text):
#: a surrogate pair, a lone surrogate (group 1), or any other escape.
ESCAPES = re.compile(
    rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def lone_surrogate(body: bytes) -> str | None:
    """The first escape of a lone surrogate in a JSON body (``\\ud800``), if any."""
    if not SURROGATE_ESCAPE.search(body):
        return None
    for escape in ESCAPES.finditer(body):
        if escape[1]:
            return "\\" + escape[1].decode()
    return None


def surrogate_path(data) -> str:
    """Where parsed JSON holds a lone surrogate, in a field name or a text:
    ``messages[0].role`` (``body`` for the whole body)."""
    pending = [("", data)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str) and SURROGATE.search(value):
            return path or "body"
        if isinstance(value, dict):
            for key, item in value.items():
                at = f"{path}.{key}" if path else key
                if SURROGATE.search(key):
                    return at
                pending.append((at, item))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return "body"


class LoneSurrogate(ParseError):
    """A 400 naming the field (``param`` in OpenAI's error shape)."""

    def __init__(self, param: str, escape: str) -> None:
        super().__init__(f"{param} is not valid Unicode: a lone surrogate ({escape}).")
        self.param = param


class JSONBodyParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        body = stream.read()
        try:
            data = super().parse(io.BytesIO(body), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        if codecs.lookup(encoding).name != "utf-8":  # UTF-16 or -32: escapes in ASCII
            body = body.decode(encoding, "replace").encode()
        if escape := lone_surrogate(body):
            raise LoneSurrogate(surrogate_path(data), escape)
        return data
