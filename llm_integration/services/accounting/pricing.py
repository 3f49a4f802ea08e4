"""What a request costs and how money is written. Money is Decimal; prices are per
million tokens.

Prompt tokens read from or written to an upstream's prompt cache have prices of their
own (CONTRACT §12): the alias's ``cache_read_price_per_mtok``,
``cache_write_price_per_mtok`` and ``cache_write_1h_price_per_mtok``, or when they are
blank Anthropic's ratios for Anthropic providers (reads 0.1×, writes 1.25× the input
price, writes kept an hour 2×) and for every other kind the input price (an hour's
writes: the write price).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from ...adapters import Usage
from ...models import ModelAlias

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.00000001")
#: Anthropic's prompt cache prices as multiples of the input price.
ANTHROPIC_CACHE_READ = Decimal("0.1")
ANTHROPIC_CACHE_WRITE = Decimal("1.25")
ANTHROPIC_CACHE_WRITE_1H = Decimal("2")


@dataclass(frozen=True, slots=True)
class Prices:
    """An alias's prices per million tokens, cache prices resolved."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal

    @classmethod
    def of(cls, alias: ModelAlias) -> Prices:
        given = alias.input_price_per_mtok
        anthropic = alias.provider.kind == "anthropic"
        read, write = alias.cache_read_price_per_mtok, alias.cache_write_price_per_mtok
        write_1h = alias.cache_write_1h_price_per_mtok
        if read is None:
            read = given * ANTHROPIC_CACHE_READ if anthropic else given
        if write is None:
            write = given * ANTHROPIC_CACHE_WRITE if anthropic else given
        if write_1h is None:
            write_1h = given * ANTHROPIC_CACHE_WRITE_1H if anthropic else write
        return cls(given, alias.output_price_per_mtok, read, write, write_1h)

    def most_per_prompt_token(self, cache_ttl: str = "") -> Decimal:
        """The most a prompt token can cost: what the worst case reserves. Only a
        request that asks for caching (``cache_ttl``: ``5m`` or ``1h``, its longest
        mark) can have tokens written."""
        most = max(self.input, self.cache_read)
        if cache_ttl:
            most = max(most, self.cache_write)
        if cache_ttl == "1h":
            most = max(most, self.cache_write_1h)
        return most


def cost_of(alias: ModelAlias, usage: Usage) -> Decimal:
    """USD cost of ``usage`` at ``alias``'s prices, rounded to 8 decimal places."""
    cost = Decimal(usage.completion_tokens) * alias.output_price_per_mtok
    if usage.cache_read_tokens or usage.cache_write_tokens:
        prices = Prices.of(alias)
        short = usage.cache_write_tokens - usage.cache_write_1h_tokens
        cost += (
            Decimal(usage.uncached_prompt_tokens) * prices.input
            + Decimal(usage.cache_read_tokens) * prices.cache_read
            + Decimal(short) * prices.cache_write
            + Decimal(usage.cache_write_1h_tokens) * prices.cache_write_1h
        )
    else:
        cost += Decimal(usage.prompt_tokens) * alias.input_price_per_mtok
    return (cost / MILLION).quantize(QUANTUM, rounding=ROUND_HALF_UP)


def worst_cost_of(
    alias: ModelAlias, prompt_tokens: int, completion_tokens: int = 0, *, cache_ttl: str = ""
) -> Decimal:
    """The most ``prompt_tokens`` in and ``completion_tokens`` out can cost, every prompt
    token at its dearest (a cache write costs more than plain input)."""
    prices = Prices.of(alias)
    cost = (
        Decimal(prompt_tokens) * prices.most_per_prompt_token(cache_ttl)
        + Decimal(completion_tokens) * prices.output
    ) / MILLION
    return cost.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def format_money(value: Decimal) -> str:
    """A decimal string without exponent, as the API renders money."""
    return format(value.quantize(QUANTUM).normalize(), "f") if value else "0"
