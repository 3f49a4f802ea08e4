"""Hostile answers, byte for byte, in each protocol's own shape: what a broken,
overloaded or compromised upstream sends. ``answer(kind, ...)`` returns a function for
``fake.push(raw=...)`` that answers a streaming request with a stream and any other
with one JSON body, so one script serves every surface.

Values are JSON *text*, written as given: ``prompt="1e999"``, ``completion="-7"``,
``text='"caf\\\\ud800"'`` put exactly those bytes on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from .server import Exchange

Answer = Callable[[Exchange], None]
WORDS = " ".join(f"word{i}" for i in range(40))


def js(value) -> str:
    return json.dumps(value)


def answer(
    kind: str,
    *,
    text: str | None = None,
    prompt: str = "11",
    completion: str = "7",
    finish: str | None = None,
    arguments: str | None = None,
    usage_event: bool = True,
) -> Answer:
    """An answer of ``kind`` (openai, anthropic, ollama) with these raw JSON values.
    ``arguments``: the raw JSON text of one tool call's ``arguments`` string (OpenAI) or
    the call's input object (Anthropic, Ollama). ``usage_event``: False leaves out the
    stream's usage (OpenAI's usage chunk, Anthropic's ``message_delta``)."""
    text = js(WORDS) if text is None else text
    build = {"openai": OpenAIAnswer, "anthropic": AnthropicAnswer, "ollama": OllamaAnswer}[kind]
    script = build(text, prompt, completion, finish, arguments, usage_event)

    def respond(ex: Exchange) -> None:
        body = ex.request.body if isinstance(ex.request.body, dict) else {}
        if body.get("stream"):
            ex.start_stream(script.stream_type)
            for piece in script.stream():
                ex.write(piece)
            ex.end_stream()
        else:
            ex.send(200, script.body().encode())

    return respond


class OpenAIAnswer:
    stream_type = "text/event-stream"

    def __init__(self, text, prompt, completion, finish, arguments, usage_event) -> None:
        self.text, self.prompt, self.completion = text, prompt, completion
        self.finish = finish or js("tool_calls" if arguments is not None else "stop")
        self.arguments, self.usage_event = arguments, usage_event

    def usage(self) -> str:
        return f'{{"prompt_tokens": {self.prompt}, "completion_tokens": {self.completion}}}'

    def calls(self, streamed: bool = False) -> str:
        index = '"index": 0, ' if streamed else ""
        return (
            f'[{{{index}"id": "call_h1", "type": "function", "function": '
            f'{{"name": "get_weather", "arguments": {self.arguments}}}}}]'
        )

    def body(self) -> str:
        calls = f', "tool_calls": {self.calls()}' if self.arguments is not None else ""
        return (
            '{"id": "chatcmpl-h", "object": "chat.completion", "created": 1, '
            '"model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": '
            f'"assistant", "content": {self.text}{calls}}}, "finish_reason": {self.finish}}}], '
            f'"usage": {self.usage()}}}'
        )

    def chunk(self, delta: str, finish: str = "null", usage: str | None = None) -> bytes:
        tail = f', "usage": {usage}' if usage is not None else ""
        return (
            'data: {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": 1, '
            '"model": "gpt-4o-mini", "choices": [{"index": 0, '
            f'"delta": {delta}, "finish_reason": {finish}}}]{tail}}}\n\n'
        ).encode()

    def stream(self) -> list[bytes]:
        events = [self.chunk('{"role": "assistant", "content": ""}')]
        events.append(self.chunk(f'{{"content": {self.text}}}'))
        if self.arguments is not None:
            events.append(self.chunk(f'{{"tool_calls": {self.calls(streamed=True)}}}'))
        events.append(self.chunk("{}", self.finish))
        if self.usage_event:
            events.append(
                f'data: {{"id": "chatcmpl-h", "choices": [], "usage": {self.usage()}}}\n\n'.encode()
            )
        events.append(b"data: [DONE]\n\n")
        return events


class AnthropicAnswer:
    stream_type = "text/event-stream"

    def __init__(self, text, prompt, completion, finish, arguments, usage_event) -> None:
        self.text, self.prompt, self.completion = text, prompt, completion
        self.finish = finish or js("tool_use" if arguments is not None else "end_turn")
        self.arguments, self.usage_event = arguments, usage_event

    def blocks(self) -> list[str]:
        blocks = [f'{{"type": "text", "text": {self.text}}}']
        if self.arguments is not None:
            blocks.append(
                '{"type": "tool_use", "id": "toolu_h1", "name": "get_weather", '
                f'"input": {self.arguments}}}'
            )
        return blocks

    def body(self) -> str:
        return (
            '{"id": "msg_h", "type": "message", "role": "assistant", "model": "claude-fake", '
            f'"content": [{", ".join(self.blocks())}], "stop_reason": {self.finish}, '
            '"stop_sequence": null, '
            f'"usage": {{"input_tokens": {self.prompt}, "output_tokens": {self.completion}}}}}'
        )

    @staticmethod
    def event(name: str, data: str) -> bytes:
        return f"event: {name}\ndata: {data}\n\n".encode()

    def stream(self) -> list[bytes]:
        e = self.event
        events = [
            e(
                "message_start",
                '{"type": "message_start", "message": {"id": "msg_h", "type": "message", '
                '"role": "assistant", "model": "claude-fake", "content": [], '
                '"stop_reason": null, "stop_sequence": null, '
                f'"usage": {{"input_tokens": {self.prompt}, "output_tokens": 1}}}}}}',
            ),
            e(
                "content_block_start",
                '{"type": "content_block_start", "index": 0, '
                '"content_block": {"type": "text", "text": ""}}',
            ),
            e(
                "content_block_delta",
                '{"type": "content_block_delta", "index": 0, '
                f'"delta": {{"type": "text_delta", "text": {self.text}}}}}',
            ),
            e("content_block_stop", '{"type": "content_block_stop", "index": 0}'),
        ]
        if self.arguments is not None:
            events += [
                e(
                    "content_block_start",
                    '{"type": "content_block_start", "index": 1, "content_block": '
                    '{"type": "tool_use", "id": "toolu_h1", "name": "get_weather", "input": {}}}',
                ),
                e(
                    "content_block_delta",
                    '{"type": "content_block_delta", "index": 1, "delta": '
                    f'{{"type": "input_json_delta", "partial_json": {js(self.arguments)}}}}}',
                ),
                e("content_block_stop", '{"type": "content_block_stop", "index": 1}'),
            ]
        if self.usage_event:
            events.append(
                e(
                    "message_delta",
                    '{"type": "message_delta", "delta": '
                    f'{{"stop_reason": {self.finish}, "stop_sequence": null}}, '
                    f'"usage": {{"output_tokens": {self.completion}}}}}',
                )
            )
        events.append(e("message_stop", '{"type": "message_stop"}'))
        return events


class OllamaAnswer:
    stream_type = "application/x-ndjson"

    def __init__(self, text, prompt, completion, finish, arguments, usage_event) -> None:
        self.text, self.prompt, self.completion = text, prompt, completion
        self.finish = finish or js("stop")
        self.arguments = arguments

    def message(self, text: str) -> str:
        call = f'{{"function": {{"name": "get_weather", "arguments": {self.arguments}}}}}'
        calls = f', "tool_calls": [{call}]' if self.arguments is not None else ""
        return f'{{"role": "assistant", "content": {text}{calls}}}'

    def final(self, text: str) -> str:
        return (
            '{"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z", '
            f'"message": {self.message(text)}, "done": true, "done_reason": {self.finish}, '
            f'"prompt_eval_count": {self.prompt}, "eval_count": {self.completion}}}'
        )

    def body(self) -> str:
        return self.final(self.text)

    def stream(self) -> list[bytes]:
        first = (
            '{"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z", '
            f'"message": {{"role": "assistant", "content": {self.text}}}, "done": false}}\n'
        )
        self.text = '""'
        return [first.encode(), (self.final('""') + "\n").encode()]


def flood(kind: str, *, size: int, shape: str) -> Answer:
    """``size`` bytes of one of these shapes, written in 64 KiB pieces (never held
    whole here either):

    - ``body``: one JSON answer of that size (a string that never ends), Content-Length
      given as is;
    - ``chunked``: the same without Content-Length;
    - ``line``: a stream whose first line never ends;
    - ``event``: a stream of short ``data:`` lines and no blank line (one endless event;
      Ollama: one endless NDJSON line);
    - ``lines``: the same of two-character lines (millions of them).
    """
    piece = b"x" * 65536

    def respond(ex: Exchange) -> None:
        h = ex.handler
        h.send_response(200)
        streaming = shape in ("line", "event", "lines")
        h.send_header("Content-Type", "text/event-stream" if streaming else "application/json")
        if shape == "body":
            h.send_header("Content-Length", str(size))
        else:
            h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        write = h.wfile.write if shape == "body" else ex.write
        sent = 0
        head = {
            "body": b'{"choices": [{"message": {"content": "',
            "chunked": b'{"choices": [{"message": {"content": "',
            "line": b"data: " if kind != "ollama" else b'{"message": {"content": "',
            "event": b"",
            "lines": b"",
        }[shape]
        if head:
            write(head)
            sent += len(head)
        lines = {
            "event": b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n" * 1024,
            "lines": b"data: xy\n" * 8192,
        }
        while sent < size:
            chunk = lines[shape] if shape in lines and kind != "ollama" else piece
            write(chunk)
            sent += len(chunk)
        h.wfile.flush()

    return respond


def idle(kind: str, *, keepalive: bytes | None = None, every: float = 0.05) -> Answer:
    """A stream that starts, then sends only keep-alives (or empty deltas, or content
    when ``keepalive`` is content) at once and every ``every`` seconds, until the client
    goes away or the fake stops."""

    def respond(ex: Exchange) -> None:
        ex.start_stream("text/event-stream")
        fake_stopping = ex.handler.server.fake.stopping
        beat = keepalive if keepalive is not None else KEEPALIVES[kind]
        if kind == "anthropic":
            ex.write(AnthropicAnswer(js("Hi"), "11", "7", None, None, True).stream()[0])
        ex.write(beat)
        while not fake_stopping.wait(every):
            ex.write(beat)

    return respond


#: A keep-alive in each protocol: an SSE comment, an empty delta, an empty NDJSON line.
KEEPALIVES = {
    "openai": b": keepalive\n\n",
    "anthropic": b'event: ping\ndata: {"type": "ping"}\n\n',
    "ollama": b'{"model": "llama3.2", "message": {"role": "assistant", "content": ""}, '
    b'"done": false}\n',
}
EMPTY_DELTA = (
    b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", '
    b'"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": null}]}\n\n'
)
CONTENT = {
    "openai": b'data: {"id": "c", "object": "chat.completion.chunk", "created": 1, '
    b'"model": "m", "choices": [{"index": 0, "delta": {"content": "more "}, '
    b'"finish_reason": null}]}\n\n',
    "anthropic": b'event: content_block_delta\ndata: {"type": "content_block_delta", '
    b'"index": 0, "delta": {"type": "text_delta", "text": "more "}}\n\n',
    "ollama": b'{"model": "llama3.2", "message": {"role": "assistant", "content": "more "}, '
    b'"done": false}\n',
}


def error(kind: str, status: int, message: str) -> Answer:
    """An error answer in ``kind``'s shape quoting ``message``."""
    if kind == "anthropic":
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    elif kind == "ollama":
        body = {"error": message}
    else:
        body = {"error": {"message": message, "type": "invalid_request_error"}}

    def respond(ex: Exchange) -> None:
        ex.send(status, json.dumps(body).encode())

    return respond
