"""Serializer fields for JSON requests, as strict as the APIs they copy: ``"100"`` is
not a number, ``1`` is not ``true`` and ``5`` is not text (DRF's own fields would
convert them)."""

from __future__ import annotations

from django.core.validators import ProhibitNullCharactersValidator
from rest_framework import serializers


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: ``"100"`` (a string) or ``true`` is refused."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number, not a string of one."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false``, not ``"yes"`` or ``1``."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictCharField(serializers.CharField):
    """JSON text, not a number written where text belongs. A NUL character is text
    like any other here (DRF refuses it by default; a prompt may hold one, as its
    messages may)."""

    default_error_messages = {"invalid": "Must be text."}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)
        ]

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)
