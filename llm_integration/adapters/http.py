"""The HTTP client of the adapters: ``httpx2`` when installed, else ``httpx``.

httpx2 is the maintained fork of httpx (same API) that the official OpenAI and
Anthropic SDKs now run on. Its connection pool keeps its state incrementally, where
httpx's re-examines every pooled connection on every request: measured here with 50
concurrent requests, 1.1 ms of CPU per request instead of 3.8 ms
(``tests/benchmarks/bench_gateway.py`` and the README's benchmark notes).
"""

from __future__ import annotations

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on what is installed
    import httpx  # type: ignore[no-redef]

__all__ = ["httpx"]
