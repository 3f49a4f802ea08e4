"""The orjson renderer of the embeddings answer writes what DRF's ``JSONRenderer``
writes, and hands back to DRF whatever orjson does not do."""

from __future__ import annotations

import json
from decimal import Decimal

from django.utils.translation import gettext_lazy
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer

from llm_integration.api.renderers import NumbersJSONRenderer, with_numbers_json

DATA = {
    "object": "list",
    "data": [{"index": i, "embedding": [0.1 * i, -2.5e-08, 1.0]} for i in range(3)],
    "note": gettext_lazy("Not found."),
    "line": "a\u2028b\u2029c é",
    "cost": Decimal("0.25"),
}


def test_the_output_parses_to_drfs_values_exactly():
    """Both write each float's shortest round-trip form (``-2.5e-8`` vs ``-2.5e-08``)."""
    ours, drfs = NumbersJSONRenderer().render(DATA), JSONRenderer().render(DATA)
    assert json.loads(ours) == json.loads(drfs)
    assert ours.startswith(b'{"object":"list","data":[{"index":0,"embedding":[0.0,')  # compact
    assert b"\\u2028" in ours and b"\\u2029" in ours and "é".encode() in ours


def test_an_indent_asked_by_the_client_is_drfs_pretty_print():
    media_type = "application/json; indent=2"
    pretty = NumbersJSONRenderer().render(DATA, media_type)
    assert pretty == JSONRenderer().render(DATA, media_type)
    assert b'\n  "object"' in pretty


def test_non_finite_floats_are_null_not_an_error():
    assert json.loads(NumbersJSONRenderer().render({"v": [float("nan"), float("inf")]})) == {
        "v": [None, None]
    }


class AsciiNumbersJSON(NumbersJSONRenderer):
    ensure_ascii = True  # what ``UNICODE_JSON = False`` sets on DRF's renderer class


class AsciiJSON(JSONRenderer):
    ensure_ascii = True


def test_ascii_only_output_is_left_to_drf():
    ours = AsciiNumbersJSON().render(DATA)
    assert ours == AsciiJSON().render(DATA)
    assert b"\\u00e9" in ours


def test_only_drfs_own_json_renderer_is_swapped():
    swapped = with_numbers_json([JSONRenderer(), AsciiJSON(), BrowsableAPIRenderer()])
    assert [type(r) for r in swapped] == [NumbersJSONRenderer, AsciiJSON, BrowsableAPIRenderer]
