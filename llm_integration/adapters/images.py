"""Images in messages: OpenAI's ``image_url`` content parts (a ``data:`` URL with base64
bytes, or an ``http(s)`` URL), checked once and carried in order with the text, for
each adapter to render in its upstream's form.

The gateway never fetches a URL itself: a URL goes to upstreams that take URLs
(OpenAI-compatible, Anthropic); Ollama takes bytes only, and is refused a URL.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from .. import exceptions as exc
from ..text.fields import refuse_unknown
from .caching import CacheControl, with_mark

MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
DATA_URL = re.compile(r"^data:(image/[a-z]+);base64,(.*)$", re.DOTALL)
DETAILS = ("auto", "low", "high")


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One image: its URL as the client sent it; for a data URL, its media type, its
    base64 text and its size in bytes."""

    url: str
    detail: str | None = None
    media_type: str = ""
    data: str = ""
    size: int = 0
    #: A prompt caching mark (Anthropic upstreams only).
    cache_control: CacheControl | None = None

    @property
    def inline(self) -> bool:
        return bool(self.data)

    def as_openai(self) -> dict[str, Any]:
        image: dict[str, Any] = {"url": self.url}
        if self.detail is not None:
            image["detail"] = self.detail
        return {"type": "image_url", "image_url": image}

    def as_anthropic(self, where: str) -> dict[str, Any]:
        self.refuse_detail(where, "anthropic")
        if self.inline:
            source = {"type": "base64", "media_type": self.media_type, "data": self.data}
        else:
            source = {"type": "url", "url": self.url}
        return with_mark({"type": "image", "source": source}, self.cache_control)

    def refuse_detail(self, where: str, kind: str) -> None:
        """``detail`` is OpenAI's; elsewhere only ``auto`` (the default) means anything."""
        if self.detail not in (None, "auto"):
            raise exc.UnsupportedParameter(
                f"{where}.image_url.detail: a {kind} upstream has no detail setting.",
                param=f"{where}.image_url.detail",
            )


def parse_image_part(part: dict[str, Any], where: str, *, max_bytes: int) -> ImagePart:
    """An ``image_url`` part checked: a data URL of a known image type within
    ``max_bytes`` (413 over it), or an http(s) URL."""
    image = part.get("image_url")
    if isinstance(image, str):  # the shorthand some clients send
        image = {"url": image}
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise exc.InvalidRequest(
            f'{where} must be {{"type": "image_url", "image_url": {{"url": ...}}}}.', param=where
        )
    refuse_unknown(image, {"url", "detail"}, prefix=f"{where}.image_url.")
    detail = image.get("detail")
    if detail is not None and detail not in DETAILS:
        raise exc.InvalidRequest(
            f"{where}.image_url.detail must be auto, low or high.",
            param=f"{where}.image_url.detail",
        )
    url = image["url"]
    if url.startswith(("https://", "http://")):
        return ImagePart(url, detail)
    match = DATA_URL.match(url)
    if match is None:
        raise exc.InvalidRequest(
            f"{where}.image_url.url must be an http(s) URL or a data:image/...;base64 URL.",
            param=f"{where}.image_url.url",
        )
    media_type, data = match.groups()
    if media_type not in MEDIA_TYPES:
        raise exc.UnsupportedContent(
            f"{where}: {media_type} is not supported (png, jpeg, gif, webp).", param=where
        )
    size = len(data) * 3 // 4 - data.count("=", -2)
    if size > max_bytes:
        raise exc.PromptTooLarge(
            f"{where}: the image has {size} bytes; the limit is {max_bytes}.", param=where
        )
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise exc.InvalidRequest(f"{where}: the image is not valid base64.", param=where) from None
    return ImagePart(url, detail, media_type, data, size)
