"""A fake OpenAI chat-completions server (also what vLLM / LiteLLM proxy speak)."""

from __future__ import annotations

import base64
import json
import struct
import time

from .server import Behaviour, Exchange, FakeUpstream, Recorded

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "not_found",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


class OpenAIFake(FakeUpstream):
    models = ("gpt-4o-mini", "fake-model")

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def scripted(self, request: Recorded) -> bool:
        return request.path.endswith(("/chat/completions", "/embeddings"))

    def handle(self, ex: Exchange, b: Behaviour) -> None:
        path = ex.request.path
        if ex.request.method == "GET" and path.endswith("/models"):
            ex.send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                        for m in self.models
                    ],
                },
            )
            return
        if path.endswith("/embeddings") and ex.request.method == "POST":
            return self.embeddings(ex, b)
        if not path.endswith("/chat/completions") or ex.request.method != "POST":
            ex.send_json(
                404,
                {
                    "error": {
                        "message": "Unknown path",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        body = ex.request.body if isinstance(ex.request.body, dict) else {}
        if b.mode == "error":
            headers = {"Retry-After": b.retry_after} if b.retry_after else {}
            ex.send_json(
                b.status,
                {
                    "error": {
                        "message": b.message,
                        "type": b.error_type or ERROR_TYPES.get(b.status, "server_error"),
                        "param": None,
                        "code": None,
                    }
                },
                headers=headers,
            )
            return
        if body.get("stream"):
            self.stream(ex, b, body)
        elif b.mode == "malformed":
            ex.send(200, b'{"id": "chatcmpl-1", "choices": [{"message": ')
        elif b.mode == "cut":
            ex.handler.send_response(200)
            ex.handler.send_header("Content-Type", "application/json")
            ex.handler.send_header("Content-Length", "500")
            ex.handler.end_headers()
            ex.cut(b'{"id": "chatcmpl-1", "object": "chat.')
        else:
            ex.send_json(
                200,
                {
                    "id": "chatcmpl-fake1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake-model"),
                    "system_fingerprint": "fp_fake",
                    "choices": [
                        {
                            "index": 0,
                            "message": self.message(b),
                            "logprobs": None,
                            "finish_reason": b.finish_reason,
                        }
                    ],
                    "usage": b.openai_usage(),
                },
            )

    def embeddings(self, ex: Exchange, b: Behaviour) -> None:
        body = ex.request.body if isinstance(ex.request.body, dict) else {}
        if b.mode == "error":
            ex.send_json(
                b.status,
                {
                    "error": {
                        "message": b.message,
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            return
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or ())
        size = body.get("dimensions") or 4
        # mode "floats": a server that ignores encoding_format (some compatible ones)
        packed = body.get("encoding_format") == "base64" and b.mode != "floats"

        def vector(text: str):
            if b.mode == "malformed":  # three bytes: no whole float32
                return "AAAA"
            floats = fake_vector(text, size)
            if not packed:
                return floats
            return base64.b64encode(struct.pack(f"<{size}f", *floats)).decode()

        ex.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector(text)}
                    for i, text in reversed(list(enumerate(inputs)))  # any order: by index
                ],
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": b.prompt_tokens, "total_tokens": b.prompt_tokens},
            },
        )

    @staticmethod
    def message(b: Behaviour) -> dict:
        message = {"role": "assistant", "content": b.text, "refusal": None}
        if b.tool_calls:
            message["content"] = b.text or None
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in b.tool_calls
            ]
        return message

    def stream(self, ex: Exchange, b: Behaviour, body: dict) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-fake1",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "system_fingerprint": "fp_fake",
        }

        def event(choices: list, usage=None) -> bytes:
            chunk = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        ex.start_stream("text/event-stream; charset=utf-8")
        ex.write(
            event(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        )
        for i, word in enumerate(b.words()):
            if b.mode == "cut" and i == b.cut_after:
                ex.cut()
                return
            if b.mode == "malformed" and i == 1:
                ex.write(b'data: {"choices": [{"delta": \n\n')
                continue
            ex.write(
                event(
                    [
                        {
                            "index": 0,
                            "delta": {"content": word},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        for index, call in enumerate(b.tool_calls or ()):
            first = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            pieces = [
                {"index": index, "function": {"arguments": p}} for p in b.pieces(call["arguments"])
            ]
            for piece in [first, *pieces]:
                ex.write(
                    event(
                        [
                            {
                                "index": 0,
                                "delta": {"tool_calls": [piece]},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ]
                    )
                )
        ex.write(
            event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": b.finish_reason}])
        )
        if include_usage and b.mode != "no_usage":
            ex.write(event([], b.openai_usage()))
        ex.write(b"data: [DONE]\n\n")
        ex.end_stream()


def fake_vector(text: str, size: int) -> list[float]:
    """A vector that tells the inputs apart (the tests check order and dimensions)."""
    return [round(len(text) + i / 10, 3) for i in range(size)]
