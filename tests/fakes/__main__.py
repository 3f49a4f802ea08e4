"""Run a fake upstream on its own: ``python -m tests.fakes openai --delay 0.2``.

Prints ``READY <base_url>`` once listening; serves until killed. Used by benchmarks so
the fake's work does not share a process (and a GIL) with the load generator.
"""

from __future__ import annotations

import argparse
import signal
import threading

from .anthropic import AnthropicFake
from .ollama import OllamaFake
from .openai import OpenAIFake
from .server import Behaviour

FAKES = {"openai": OpenAIFake, "anthropic": AnthropicFake, "ollama": OllamaFake}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(FAKES))
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--text", default="Hello from the fake upstream!")
    args = parser.parse_args()
    fake = FAKES[args.kind]()
    fake.default = Behaviour(mode="slow" if args.delay else "ok", delay=args.delay, text=args.text)
    fake.start()
    print(f"READY {fake.base_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    fake.stop()


if __name__ == "__main__":
    main()
