"""What a conversation's turn adds to a chat call (run on demand; prints figures).

    python tests/benchmarks/bench_conversations.py [--turns 50] [--requests 400]

The set-up of ``bench_litellm.py`` (its config imported with ``llm_bootstrap``, the
zero-latency fake upstream in its own process), the project's ASGI application called in
this process, one request at a time. A conversation holds ``--turns`` kept turns; the
same upstream conversation is sent two ways, alternating: ``POST /api/v1/chat`` with the
whole history in ``messages`` (what a client does without conversations), and
``POST /api/v1/conversations/<id>/messages`` with the new message only (the gateway
reads the kept turns, plans the context, and records the turn before answering).
Between turns the two new messages are deleted (outside the timing), so every turn sees
the same history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_concurrency import start
from bench_litellm import CONFIG, bench_env, bootstrap
from inprocess import post_json


async def post(application, path: str, body: dict, token: str) -> float:
    """Seconds from the request to the handler's return."""
    began = time.perf_counter()
    await post_json(application, path, json.dumps(body).encode(), token)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp())
    env = bench_env(workdir)
    fake = start([sys.executable, "-m", "tests.fakes.fast_openai"], env, ready="READY")
    try:
        config = workdir / "config.yaml"
        config.write_text(CONFIG.format(upstream=fake.ready_line.split()[1]))
        token = bootstrap(env, config).strip()
        os.environ.update(env)
        os.environ["LLM_LOG_LEVEL"] = "ERROR"  # the fake's usage is replaced, and says so
        import django

        django.setup()
        from asgiref.sync import sync_to_async
        from rest_framework.authtoken.models import Token

        from llm_integration.models import ConversationMessage
        from llm_integration.services.memory import conversations
        from project.asgi import application

        def history() -> tuple[str, list[dict]]:
            user = Token.objects.get(key=token).user
            made = conversations.create(user, model="bench", system_prompt="", title="bench")
            messages = []
            for n in range(args.turns):
                messages.append({"role": "user", "content": f"Question {n}: " + "word " * 40})
                messages.append({"role": "assistant", "content": f"Answer {n}: " + "word " * 60})
            ConversationMessage.objects.bulk_create(
                ConversationMessage(
                    conversation_id=made["id"],
                    position=i,
                    role=m["role"],
                    content=m["content"],
                    tokens=conversations.message_tokens(m["content"]),
                )
                for i, m in enumerate(messages)
            )
            return made["id"], messages

        def reset(conversation: str) -> None:
            ConversationMessage.objects.filter(
                conversation_id=conversation, position__gte=2 * args.turns
            ).delete()

        conversation, messages = asyncio.run(sync_to_async(history)())
        new = {"role": "user", "content": "And now?"}
        chat_body = {"model": "bench", "messages": [*messages, new]}
        turn_body = {"message": new["content"]}
        turn_path = f"/api/v1/conversations/{conversation}/messages"

        async def run() -> tuple[list[float], list[float]]:
            chat, turn = [], []
            for _ in range(args.requests):
                chat.append(await post(application, "/api/v1/chat", chat_body, token))
                turn.append(await post(application, turn_path, turn_body, token))
                await sync_to_async(reset)(conversation)
            return chat, turn

        chat, turn = asyncio.run(run())
        chat, turn = chat[len(chat) // 4 :], turn[len(turn) // 4 :]

        def line(name: str, values: list[float]) -> str:
            cuts = statistics.quantiles(values, n=100)
            p50, p99 = statistics.median(values) * 1e3, cuts[98] * 1e3
            return f"  {name:<34} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"

        print(f"{args.turns} kept turns, one request at a time, in process, {len(chat)} each")
        print(line("chat, the whole history sent", chat))
        print(line("conversation turn, one message", turn))
        added = statistics.median(turn) - statistics.median(chat)
        print(f"  the turn adds {added * 1e3:.2f} ms (p50)")
    finally:
        fake.terminate()


if __name__ == "__main__":
    main()
