"""The Responses API's items, both ways: input items checked and turned into the chat's
messages, and the output items an answer is written as (``message``,
``function_call``, ``reasoning``).

A ``reasoning`` item carries a thinking block of an Anthropic upstream: its text as
``reasoning_text`` content, and the whole block (signature, or redacted data) in
``encrypted_content``, which the gateway makes and reads back (it is opaque to the
client, not encrypted: the thinking text is the client's to see anyway). Sent back in a
later turn, it goes upstream as the assistant's thinking block again, as Anthropic
requires when thinking and tools are used together.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .. import exceptions as exc
from ..adapters.images import DATA_URL, DETAILS, parse_image_part
from ..adapters.thinking import ThinkingBlock, parse_thinking_blocks
from ..conf import llm_settings
from ..text.fields import refuse_unknown

#: A message item's roles, as the chat's (``developer`` is a system message).
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: What each input item may carry (``id`` and ``status`` are the client's bookkeeping).
ITEM_FIELDS = {
    "message": frozenset({"type", "role", "content", "id", "status"}),
    "function_call": frozenset({"type", "call_id", "name", "arguments", "id", "status"}),
    "function_call_output": frozenset({"type", "call_id", "output", "id", "status"}),
    "reasoning": frozenset({"type", "id", "summary", "content", "encrypted_content", "status"}),
}
#: The prefix of the gateway's own ``encrypted_content``.
OPAQUE = "llmgw1:"


def invalid(message: str, param: str) -> exc.InvalidRequest:
    return exc.InvalidRequest(message, param=param)


def required_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{where} must be text.", where)
    return value


def content_parts(
    content: Any, where: str, *, role: str, stored: bool = False
) -> str | list[dict[str, Any]]:
    """A message's content as the chat's: text, or text and image parts. An image of a
    ``stored`` item was checked when it was first sent: it is not decoded again."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{where} must be text or a list of content parts.", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            refuse_unknown(part, {"type", "text", "annotations", "logprobs"}, prefix=f"{at}.")
            parts.append({"type": "text", "text": required_text(part.get("text"), f"{at}.text")})
        elif kind == "input_image" and role == "user":
            refuse_unknown(part, {"type", "image_url", "detail"}, prefix=f"{at}.")
            parts.append(
                {"type": "image_url", "image_url": checked_image(part, at, decode=not stored)}
            )
        else:
            raise exc.UnsupportedContent(
                f"{at}: only input_text, output_text and (from users) input_image parts are "
                "supported here.",
                param=f"{at}.type",
            )
    return parts


def checked_image(part: dict[str, Any], at: str, *, decode: bool = True) -> dict[str, str]:
    """An ``input_image``'s URL and detail as the chat's ``image_url``, checked as the
    chat path checks images (an http(s) URL, or a data URL of a known type within
    ``MAX_IMAGE_BYTES``), its errors named as the client wrote the part; ``decode``
    false skips decoding a data URL (an image already checked)."""
    image = {"url": required_text(part.get("image_url"), f"{at}.image_url")}
    if (detail := part.get("detail")) is not None:
        if detail not in DETAILS:
            raise invalid(f"{at}.detail must be auto, low or high.", f"{at}.detail")
        image["detail"] = detail
    if not image["url"].startswith(("https://", "http://")) and not DATA_URL.match(image["url"]):
        raise invalid(
            f"{at}.image_url must be an http(s) URL or a data:image/...;base64 URL.",
            f"{at}.image_url",
        )
    if decode:
        parse_image_part({"image_url": image}, at, max_bytes=int(llm_settings.MAX_IMAGE_BYTES))
    return image


def output_text(output: Any, where: str) -> str:
    """A function call's output: text, or input_text parts joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            at = f"{where}[{j}]"
            if not isinstance(part, dict) or part.get("type") != "input_text":
                raise exc.UnsupportedContent(
                    f"{at}: a function call's output is text here.", param=at
                )
            refuse_unknown(part, {"type", "text"}, prefix=f"{at}.")
            texts.append(required_text(part.get("text"), f"{at}.text"))
        return "".join(texts)
    raise invalid(f"{where} must be text.", where)


def opaque(block: ThinkingBlock) -> str:
    """A thinking block as a reasoning item's ``encrypted_content``."""
    data = json.dumps(block.as_anthropic(), separators=(",", ":")).encode()
    return OPAQUE + base64.urlsafe_b64encode(data).decode()


def thinking_block(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A reasoning item's thinking block (the assistant's ``thinking_blocks`` entry); only
    the gateway's own ``encrypted_content`` can be replayed."""
    content = item.get("encrypted_content")
    block = None
    if isinstance(content, str) and content.startswith(OPAQUE):
        try:
            block = json.loads(base64.urlsafe_b64decode(content.removeprefix(OPAQUE)))
        except (ValueError, binascii.Error, RecursionError):
            block = None
    if isinstance(block, dict):
        try:
            parse_thinking_blocks([block], f"{where}.encrypted_content")
        except exc.InvalidRequest:
            block = None
    if not isinstance(block, dict):
        raise exc.UnsupportedContent(
            f"{where}: a reasoning item is replayed from its encrypted_content, which must be "
            "one this gateway returned.",
            param=f"{where}.encrypted_content",
        )
    return block


def checked_items(value: Any) -> list[dict[str, Any]]:
    """The input as items (text is one user message), each item's shape checked: its
    type, fields, role and ids. Content, outputs and reasoning are checked once, as
    ``conversation`` translates them (with the stored items before them, so that a
    function call output answers a call made anywhere earlier)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid("input must be text or a non-empty list of items.", "input")
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object.", where)
        kind = item.get("type", "message")
        if not isinstance(kind, str) or kind not in ITEM_FIELDS:
            raise exc.UnsupportedContent(
                f"{where}: items of type {kind!r:.80} are not supported here (message, "
                "function_call, function_call_output and reasoning are).",
                param=f"{where}.type",
            )
        refuse_unknown(item, ITEM_FIELDS[kind], prefix=f"{where}.")
        bookkeeping(item, where)
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in ROLES:
                raise invalid(
                    f"{where}.role must be user, assistant, system or developer.", f"{where}.role"
                )
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                required_text(item.get(name), f"{where}.{name}")
        elif kind == "function_call_output":
            required_text(item.get("call_id"), f"{where}.call_id")
        items.append({**item, "type": kind})
    return items


#: An item's ``status``, as OpenAI writes it.
STATUSES = frozenset({"in_progress", "completed", "incomplete"})
#: The longest item ``id`` kept (OpenAI's are about 50 characters).
MAX_ID = 128


def bookkeeping(item: dict[str, Any], where: str) -> None:
    """An item's ``id`` and ``status`` are short words, and a reasoning item's
    ``summary`` and ``content`` its own parts: nothing else is kept for free."""
    item_id, status = item.get("id"), item.get("status")
    if item_id is not None and (not isinstance(item_id, str) or len(item_id) > MAX_ID):
        raise invalid(f"{where}.id must be text of at most {MAX_ID} characters.", f"{where}.id")
    if status is not None and (not isinstance(status, str) or status not in STATUSES):
        raise invalid(
            f"{where}.status must be in_progress, completed or incomplete.", f"{where}.status"
        )
    if item.get("type") != "reasoning":
        return
    for name, part in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(name)
        if parts is not None and (
            not isinstance(parts, list)
            or not all(
                isinstance(p, dict)
                and p.get("type") == part
                and isinstance(p.get("text"), str)
                and set(p) <= {"type", "text"}
                for p in parts
            )
        ):
            raise invalid(
                f"{where}.{name} must be a list of {part} parts (type and text).",
                f"{where}.{name}",
            )


def _empty(content: str | list[dict[str, Any]]) -> bool:
    if isinstance(content, str):
        return not content
    return all(part["type"] == "text" and not part["text"] for part in content)


def conversation(earlier: list[dict[str, Any]], items: list[dict[str, Any]]) -> list[dict]:
    """Checked items (the stored ones first) as the chat's messages: an assistant's
    reasoning, text and ``function_call`` items make one assistant turn (its
    ``thinking_blocks``, content and ``tool_calls``), each ``function_call_output`` a
    ``tool`` message. An assistant's empty text (an answer that was only tool calls) is
    no turn of its own. A call cut short (``status: incomplete``, the answer stopped at
    ``max_output_tokens``) that no output answers is left out: no tool ran it, and
    upstreams refuse a call without its result. Errors name the new input's items
    (``input[i]``)."""
    messages: list[dict[str, Any]] = []
    thoughts: list[dict[str, Any]] = []  # reasoning waiting for its assistant turn
    called: set[str] = set()
    offset = len(earlier)
    answered = {
        item["call_id"] for item in [*earlier, *items] if item["type"] == "function_call_output"
    }

    def where(i: int) -> str:
        return f"input[{i - offset}]" if i >= offset else "previous_response_id"

    def assistant_turn() -> dict[str, Any]:
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant" or thoughts:
            last = {"role": "assistant", "content": None}
            messages.append(last)
        if thoughts:
            last["thinking_blocks"] = thoughts.copy()
            thoughts.clear()
        return last

    for i, item in enumerate([*earlier, *items]):
        kind = item["type"]
        if kind == "reasoning":
            thoughts.append(thinking_block(item, where(i)))
        elif kind == "message":
            role = item["role"]
            content = content_parts(
                item["content"], f"{where(i)}.content", role=role, stored=i < offset
            )
            if role != "assistant":
                if thoughts:
                    assistant_turn()
                messages.append({"role": ROLES[role], "content": content})
            elif not _empty(content):
                turn = assistant_turn()
                if turn["content"] is None and not turn.get("tool_calls"):
                    turn["content"] = content
                else:
                    messages.append({"role": "assistant", "content": content})
        elif kind == "function_call":
            incomplete = item.get("status") == "incomplete"
            if incomplete and item["call_id"] not in answered:
                continue
            arguments = call_arguments(item, where(i), unfinished=incomplete or i < offset)
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": arguments},
            }
            assistant_turn().setdefault("tool_calls", []).append(call)
            called.add(item["call_id"])
        else:
            if item["call_id"] not in called:
                raise invalid(
                    f"{where(i)}.call_id: no earlier function_call has call_id "
                    f"{item['call_id']!r:.80}.",
                    f"{where(i)}.call_id",
                )
            output = output_text(item["output"], f"{where(i)}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    if thoughts:
        assistant_turn()
    return messages


def call_arguments(item: dict[str, Any], where: str, *, unfinished: bool) -> str:
    """A function call's ``arguments``: a JSON object in text. Where they may be
    ``unfinished`` (a call cut short, or one the gateway stored as an upstream wrote
    it), text that is not one goes upstream as ``{}``, as Anthropic's API gives such a
    call back; a client's own call with other arguments is a 400 naming them."""
    text = item["arguments"]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
        value = None
    if isinstance(value, dict):
        return text
    if unfinished:
        return "{}"
    raise invalid(f"{where}.arguments must be a JSON object in text.", f"{where}.arguments")


def message_item(item_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(
    item_id: str, call_id: str, name: str, arguments: str, *, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def reasoning_item(item_id: str, block: ThinkingBlock, *, status: str = "completed") -> dict:
    """A thinking block as a reasoning item (a redacted one has no text to show)."""
    content = [] if block.redacted else [{"type": "reasoning_text", "text": block.thinking}]
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": content,
        "encrypted_content": opaque(block),
        "status": status,
    }
