"""Prometheus collectors of the gateway (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "llm_requests_total", "Requests through the gateway.", ["alias", "provider", "status"]
)
DURATION = Histogram(
    "llm_request_duration_seconds",
    "Time from admission to the last byte.",
    ["alias", "provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
TOKENS = Counter(
    "llm_tokens_used_total",
    "Tokens used, by type: prompt (input neither read from nor written to the "
    "upstream's prompt cache), cache_read, cache_write and completion; they add up.",
    ["alias", "provider", "type"],
)
CACHE_HITS = Counter("llm_cache_hits_total", "Answers served from the response cache.", ["alias"])
ERRORS = Counter(
    "llm_errors_total", "Failed requests by error code.", ["alias", "provider", "error_type"]
)
COST = Counter("llm_cost_usd_total", "Cost in USD.", ["alias", "provider"])
BUDGET_SPENT = Gauge("llm_budget_spent_usd", "Spent in the current period.", ["budget"])
BUDGET_LIMIT = Gauge("llm_budget_limit_usd", "Limit of the budget.", ["budget"])
BUDGET_REMAINING = Gauge("llm_budget_remaining_usd", "Left in the current period.", ["budget"])
CIRCUIT_OPEN = Gauge(
    "llm_circuit_open",
    "1 while a circuit is open: a provider's endpoint (model empty) or one deployment.",
    ["provider", "model"],
)

QUEUE_WAIT = Histogram(
    "llm_queue_wait_seconds",
    "Time requests waited at a concurrency cap or a rate limit before going on.",
    ["limit"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
QUEUE_DEPTH = Gauge(
    "llm_queue_depth", "Requests waiting at a concurrency cap or a rate limit.", ["limit"]
)


def observe(
    *,
    alias: str,
    provider: str,
    status: str,
    seconds: float,
    prompt_tokens: int,
    completion_tokens: int,
    cost: float,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    error_type: str = "",
    cached: bool = False,
) -> None:
    REQUESTS.labels(alias, provider, status).inc()
    DURATION.labels(alias, provider).observe(seconds)
    if uncached := prompt_tokens - cache_read_tokens - cache_write_tokens:
        TOKENS.labels(alias, provider, "prompt").inc(uncached)
    if completion_tokens:
        TOKENS.labels(alias, provider, "completion").inc(completion_tokens)
    if cache_read_tokens:
        TOKENS.labels(alias, provider, "cache_read").inc(cache_read_tokens)
    if cache_write_tokens:
        TOKENS.labels(alias, provider, "cache_write").inc(cache_write_tokens)
    if cost:
        COST.labels(alias, provider).inc(cost)
    if cached:
        CACHE_HITS.labels(alias).inc()
    if error_type:
        ERRORS.labels(alias, provider, error_type).inc()


def observe_budgets(settled) -> None:
    """Budget gauges from a request's settlement (``budgets.Settled``: budget, spent)."""
    from .models import units_to_usd

    for entry in settled:
        budget, spent = entry.budget, units_to_usd(entry.spent_units)
        BUDGET_SPENT.labels(budget.name).set(float(spent))
        BUDGET_LIMIT.labels(budget.name).set(float(budget.limit_usd))
        BUDGET_REMAINING.labels(budget.name).set(float(max(budget.limit_usd - spent, 0)))
