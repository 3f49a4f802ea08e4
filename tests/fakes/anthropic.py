"""A fake Anthropic Messages server: JSON replies and the SSE event sequence."""

from __future__ import annotations

import json

from .server import Behaviour, Exchange, FakeUpstream, Recorded

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def thinking_blocks(b: Behaviour) -> list[dict]:
    """The answer's reasoning blocks: ``{"thinking", "signature"}`` or ``{"redacted"}``."""
    return [
        {"type": "redacted_thinking", "data": t["redacted"]}
        if "redacted" in t
        else {"type": "thinking", "thinking": t["thinking"], "signature": t["signature"]}
        for t in b.thinking or ()
    ]


def tool_use_blocks(b: Behaviour) -> list[dict]:
    return [
        {
            "type": "tool_use",
            "id": call["id"],
            "name": call["name"],
            "input": json.loads(call["arguments"]),
        }
        for call in b.tool_calls or ()
    ]


class AnthropicFake(FakeUpstream):
    @property
    def base_url(self) -> str:
        return self.origin

    def scripted(self, request: Recorded) -> bool:
        return request.path.startswith("/v1/messages")

    def handle(self, ex: Exchange, b: Behaviour) -> None:
        req = ex.request
        headers = {"request-id": "req_fake_1"}
        if req.path.startswith("/v1/models") and req.method == "GET":
            ex.send_json(
                200,
                {
                    "data": [
                        {
                            "type": "model",
                            "id": "claude-fake",
                            "display_name": "Claude Fake",
                            "created_at": "2025-01-01T00:00:00Z",
                        }
                    ],
                    "has_more": False,
                    "first_id": "claude-fake",
                    "last_id": "claude-fake",
                },
            )
            return
        if not req.path.startswith("/v1/messages") or req.method != "POST":
            return self.error(ex, 404, "Not found", headers)
        # The API takes the key as x-api-key or (current SDKs) as a bearer token.
        has_key = "x-api-key" in req.headers or req.headers.get("authorization", "").startswith(
            "Bearer "
        )
        if not has_key or "anthropic-version" not in req.headers:
            return self.error(ex, 401, "x-api-key header is required", headers)
        body = req.body if isinstance(req.body, dict) else {}
        if "max_tokens" not in body:
            return self.error(ex, 400, "max_tokens: Field required", headers)
        if b.mode == "error":
            if b.retry_after:
                headers["retry-after"] = b.retry_after
            return self.error(ex, b.status, b.message, headers, b.error_type)
        if body.get("stream"):
            return self.stream(ex, b, body, headers)
        if b.mode == "malformed":
            ex.send(200, b'{"id": "msg_1", "type": "message", "content": [', headers=headers)
            return
        ex.send_json(
            200,
            {
                "id": "msg_fake1",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "claude-fake"),
                "content": thinking_blocks(b)
                + ([{"type": "text", "text": b.text}] if b.text else [])
                + tool_use_blocks(b),
                "stop_reason": STOP_REASONS.get(b.finish_reason, "end_turn"),
                "stop_sequence": None,
                "usage": b.anthropic_usage(b.completion_tokens),
            },
            headers=headers,
        )

    def error(
        self, ex: Exchange, status: int, message: str, headers: dict, error_type: str = ""
    ) -> None:
        ex.send_json(
            status,
            {
                "type": "error",
                "error": {
                    "type": error_type or ERROR_TYPES.get(status, "api_error"),
                    "message": message,
                },
            },
            headers=headers,
        )

    def stream(self, ex: Exchange, b: Behaviour, body: dict, headers: dict) -> None:
        def event(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        ex.start_stream("text/event-stream; charset=utf-8", headers)
        ex.write(
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake1",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model", "claude-fake"),
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": b.anthropic_usage(1),
                    },
                },
            )
        )
        ex.write(event("ping", {"type": "ping"}))
        offset = len(b.thinking or ())  # the reasoning blocks come first
        for index, block in enumerate(thinking_blocks(b)):
            start = dict(block, thinking="", signature="") if block["type"] == "thinking" else block
            ex.write(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
            )
            if block["type"] == "thinking":
                for piece in b.pieces(block["thinking"]):
                    delta = {"type": "thinking_delta", "thinking": piece}
                    ex.write(
                        event(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                        )
                    )
                delta = {"type": "signature_delta", "signature": block["signature"]}
                ex.write(
                    event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    )
                )
            ex.write(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        if b.text:
            ex.write(
                event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": offset,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        for i, word in enumerate(b.words()):
            if b.mode == "cut" and i == b.cut_after:
                ex.cut()
                return
            if b.mode == "error_event" and i == b.cut_after:
                ex.write(
                    event(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                )
                ex.end_stream()
                return
            if b.mode == "malformed" and i == 1:
                ex.write(b'event: content_block_delta\ndata: {"type": "content_block_delta",\n\n')
                continue
            ex.write(
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": offset,
                        "delta": {"type": "text_delta", "text": word},
                    },
                )
            )
        if b.text:
            ex.write(event("content_block_stop", {"type": "content_block_stop", "index": offset}))
        for index, call in enumerate(b.tool_calls or (), start=offset + (1 if b.text else 0)):
            block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
            ex.write(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
            for piece in b.pieces(call["arguments"]):
                ex.write(
                    event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
            ex.write(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        ex.write(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": STOP_REASONS.get(b.finish_reason, "end_turn"),
                        "stop_sequence": None,
                    },
                    "usage": b.anthropic_delta_usage(),
                },
            )
        )
        ex.write(event("message_stop", {"type": "message_stop"}))
        ex.end_stream()
