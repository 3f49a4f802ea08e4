"""Request body parsing for the API: DRF's JSON parser, with every way a body can fail
to be JSON answered as a 400 (JSON nested deeper than Python's recursion limit raises
``RecursionError``, which DRF's parser lets through as a 500)."""

from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JSONBodyParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
