"""A fake Ollama server: /api/chat (NDJSON stream or one JSON) and /api/tags."""

from __future__ import annotations

import json

from .openai import fake_vector
from .server import Behaviour, Exchange, FakeUpstream, Recorded

CREATED = "2026-11-21T12:00:00.000000Z"


class OllamaFake(FakeUpstream):
    pulled = ("llama3.2:latest",)

    @property
    def base_url(self) -> str:
        return self.origin

    def scripted(self, request: Recorded) -> bool:
        return request.path in ("/api/chat", "/api/embed")

    def handle(self, ex: Exchange, b: Behaviour) -> None:
        req = ex.request
        if req.path == "/api/tags" and req.method == "GET":
            ex.send_json(
                200,
                {
                    "models": [
                        {
                            "name": name,
                            "model": name,
                            "modified_at": CREATED,
                            "size": 2019393189,
                            "digest": "a80c4f17acd5",
                            "details": {
                                "format": "gguf",
                                "family": "llama",
                                "parameter_size": "3.2B",
                            },
                        }
                        for name in self.pulled
                    ]
                },
            )
            return
        if req.path == "/api/embed" and req.method == "POST":
            body = req.body if isinstance(req.body, dict) else {}
            if b.mode == "error":
                ex.send_json(b.status, {"error": b.message})
                return
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or ())
            size = body.get("dimensions") or 4
            ex.send_json(
                200,
                {
                    "model": body.get("model"),
                    "embeddings": [fake_vector(text, size) for text in inputs],
                    "total_duration": 14143917,
                    "load_duration": 1019500,
                    "prompt_eval_count": b.prompt_tokens,
                },
            )
            return
        if req.path != "/api/chat" or req.method != "POST":
            ex.send_json(404, {"error": "404 page not found"})
            return
        body = req.body if isinstance(req.body, dict) else {}
        if b.mode == "error":
            ex.send_json(b.status, {"error": b.message})
            return
        model = body.get("model", "llama3.2")
        final = {
            "model": model,
            "created_at": CREATED,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            # Ollama says "stop" when it called tools.
            "done_reason": "stop" if b.finish_reason == "tool_calls" else b.finish_reason,
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_count": b.prompt_tokens,
            "prompt_eval_duration": 342546000,
            "eval_count": b.completion_tokens,
            "eval_duration": 4535599000,
        }
        if b.mode == "no_usage":  # Ollama omits prompt_eval_count for a cached prompt
            del final["prompt_eval_count"]
        if body.get("stream", True) is False:
            if b.mode == "malformed":
                ex.send(200, b'{"model": "llama3.2", "message": {')
                return
            ex.send_json(200, {**final, "message": self.message(b)})
            return
        ex.start_stream("application/x-ndjson")
        for i, word in enumerate(b.words()):
            if b.mode == "cut" and i == b.cut_after:
                ex.cut()
                return
            if b.mode == "malformed" and i == 1:
                ex.write(b'{"model": "llama3.2", "message": \n')
                continue
            ex.write(
                json.dumps(
                    {
                        "model": model,
                        "created_at": CREATED,
                        "message": {"role": "assistant", "content": word},
                        "done": False,
                    }
                ).encode()
                + b"\n"
            )
        if b.tool_calls:  # Ollama streams each call whole, in a chunk of its own
            message = {**self.message(b), "content": ""}
            chunk = {"model": model, "created_at": CREATED, "message": message, "done": False}
            ex.write(json.dumps(chunk).encode() + b"\n")
        ex.write(json.dumps(final).encode() + b"\n")
        ex.end_stream()

    @staticmethod
    def message(b: Behaviour) -> dict:
        message = {"role": "assistant", "content": b.text}
        if b.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": c["name"], "arguments": json.loads(c["arguments"])}}
                for c in b.tool_calls
            ]
        return message
