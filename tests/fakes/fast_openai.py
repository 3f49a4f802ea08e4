"""A fast fake OpenAI upstream on asyncio, for load benchmarks.

The threaded fakes (``tests/fakes/openai.py``) script every failure mode for tests; under
hundreds of concurrent requests their thread per connection and the GIL add tens of
milliseconds. This one serves the happy paths of ``/chat/completions`` (JSON, and SSE
with the usage chunk; a request with ``tools`` gets a streamed tool call whose argument
pieces match the text stream's words in number and length) and ``/embeddings`` from
one event loop, after a fixed ``delay``, with keep-alive.

    python -m tests.fakes.fast_openai --delay 0.2     # prints READY <base_url>
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import struct
import time

WORDS = ["Hello", " from", " the", " fake", " upstream!"]


def completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fast",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
        }
    ).encode()


def tool_pieces() -> list[str]:
    """A tool call's arguments cut into as many pieces, as long, as the text's words."""
    text = "".join(WORDS)
    arguments = '{"q":"' + text[: len(text) - 8] + '"}'
    cuts, start = [], 0
    for word in WORDS:
        cuts.append(arguments[start : start + len(word)])
        start += len(word)
    cuts[-1] += arguments[start:]
    return cuts


def embeddings(request: dict) -> bytes:
    inputs = request.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs or []
    return embedding_list(
        len(inputs),
        request.get("dimensions") or 1536,
        request.get("model", "fake"),
        request.get("encoding_format") == "base64",
    )


@functools.lru_cache(maxsize=16)
def embedding_list(count: int, size: int, model: str, packed: bool) -> bytes:
    """The answer to ``count`` inputs (made once: the fake should cost the benchmark
    little CPU)."""
    # float32 values, printed as OpenAI prints them (about 20 characters each)
    vector = list(
        struct.unpack(
            f"<{size}f",
            struct.pack(f"<{size}f", *(((i * 7919) % 2001 - 1000) / 13337.0 for i in range(size))),
        )
    )
    if packed:
        vector = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
    return json.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector} for i in range(count)
            ],
            "model": model,
            "usage": {"prompt_tokens": 2 * count, "total_tokens": 2 * count},
        }
    ).encode()


def sse_events(model: str, include_usage: bool, tools: bool = False) -> list[bytes]:
    base = {
        "id": "chatcmpl-fast",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(choices, usage=None) -> bytes:
        body = {**base, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    ]
    if tools:
        head, *rest = tool_pieces()
        first = {"index": 0, "id": "call_1", "type": "function"}
        pieces = [{**first, "function": {"name": "lookup", "arguments": head}}]
        pieces += [{"index": 0, "function": {"arguments": piece}} for piece in rest]
        events += [
            event([{"index": 0, "delta": {"tool_calls": [p]}, "finish_reason": None}])
            for p in pieces
        ]
    else:
        events += [
            event([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in WORDS
        ]
    finish = "tool_calls" if tools else "stop"
    events.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
    if include_usage:
        events.append(event([], {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}))
    events.append(b"data: [DONE]\n\n")
    return events


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin1").split("\r\n")
            headers = {
                k.lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            request = json.loads(body) if body else {}
            await asyncio.sleep(delay)
            model = request.get("model", "fake")
            if lines[0].split()[1].endswith("/embeddings"):
                data = embeddings(request)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
                )
            elif request.get("stream"):
                include = bool((request.get("stream_options") or {}).get("include_usage"))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for data in sse_events(model, include, bool(request.get("tools"))):
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                writer.write(b"0\r\n\r\n")
            else:
                data = completion(model)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
                )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=1, help="the answer's words, n times")
    args = parser.parse_args()
    global WORDS
    WORDS = WORDS * args.repeat
    try:
        asyncio.run(serve(args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
