"""Signals the app sends (its receivers of Django's signals live beside what they keep
fresh: ``services.config.invalidation``)."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent once per budget, period and threshold: kwargs budget, threshold, spent_usd, limit_usd.
budget_threshold_reached = Signal()

#: Sent (``asend``, from the event loop) after a request's settlement fired budget
#: alerts: kwargs ``user`` (who made the request) and ``alerts`` (``BudgetAlert`` rows).
#: The WebSocket consumer tells that user's open pages.
budget_alerts_fired = Signal()
