"""What a request costs and how money is written. Money is Decimal; prices are per
million tokens."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ...adapters import Usage
from ...models import ModelAlias

MILLION = Decimal(1_000_000)
QUANTUM = Decimal("0.00000001")


def cost_of(alias: ModelAlias, usage: Usage) -> Decimal:
    """USD cost of ``usage`` at ``alias``'s prices, rounded to 8 decimal places."""
    cost = (
        Decimal(usage.prompt_tokens) * alias.input_price_per_mtok
        + Decimal(usage.completion_tokens) * alias.output_price_per_mtok
    ) / MILLION
    return cost.quantize(QUANTUM, rounding=ROUND_HALF_UP)


def format_money(value: Decimal) -> str:
    """A decimal string without exponent, as the API renders money."""
    return format(value.quantize(QUANTUM).normalize(), "f") if value else "0"
