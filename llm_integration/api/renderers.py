"""JSON rendered by orjson, for answers made mostly of numbers.

An embeddings answer of 100 vectors × 256 dimensions holds 25,600 floats: the standard
library's encoder (DRF's ``JSONRenderer``) takes about 12 ms to write them, orjson about
1 ms. The output is the same JSON, compact, UTF-8.
"""

from __future__ import annotations

import orjson
from rest_framework.renderers import JSONRenderer


class NumbersJSONRenderer(JSONRenderer):
    """DRF's ``JSONRenderer`` with orjson doing the encoding.

    Where the settings or the client ask for what orjson does not write — an
    ``indent`` (``Accept: application/json; indent=4``), ASCII-only output
    (``UNICODE_JSON = False``) or spaced separators (``COMPACT_JSON = False``) — DRF's
    own rendering runs. Values orjson does not know (lazy strings, ``Decimal``) go
    through DRF's encoder; non-finite floats become ``null`` instead of an error.
    """

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        indent = self.get_indent(accepted_media_type, renderer_context or {})
        if indent is not None or self.ensure_ascii or not self.compact:
            return super().render(data, accepted_media_type, renderer_context)
        text = orjson.dumps(data, default=self.encoder_class().default)
        if b"\xe2" not in text:  # one memchr; the replacements would copy the whole answer
            return text
        # As DRF does: U+2028 and U+2029 escaped, so the JSON is also valid JavaScript.
        return text.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")


def with_numbers_json(renderers: list) -> list:
    """The view's renderers, DRF's own ``JSONRenderer`` swapped for ``NumbersJSONRenderer``
    (a host's custom JSON renderer is kept as it is)."""
    return [NumbersJSONRenderer() if type(r) is JSONRenderer else r for r in renderers]
