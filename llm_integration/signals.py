"""Signals the app sends, and the receivers it connects in ``AppConfig.ready``."""

from __future__ import annotations

from django.core.signals import setting_changed
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from .models import (
    AliasFallback,
    Budget,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    Subscription,
)

CONFIG_MODELS = (Provider, ModelAlias, AliasFallback, Plan, PlanEntitlement, Subscription, Budget)

#: Sent once per budget, period and threshold: kwargs budget, threshold, spent_usd, limit_usd.
budget_threshold_reached = Signal()

#: Sent (``asend``, from the event loop) after a request's settlement fired budget
#: alerts: kwargs ``user`` (who made the request) and ``alerts`` (``BudgetAlert`` rows).
#: The WebSocket consumer tells that user's open pages.
budget_alerts_fired = Signal()


def _config_changed(sender, **kwargs) -> None:
    from .services.config import invalidate
    from .services.providers import clear_adapter_cache

    invalidate()  # every process reloads its snapshot of the rows
    if sender in (Provider, ModelAlias):
        clear_adapter_cache()


for _model in CONFIG_MODELS:
    post_save.connect(_config_changed, sender=_model, dispatch_uid=f"llm-config-{_model.__name__}")
    post_delete.connect(
        _config_changed, sender=_model, dispatch_uid=f"llm-config-del-{_model.__name__}"
    )


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting == "LLM_INTEGRATION":
        from .services.config import config
        from .services.providers import clear_adapter_cache

        clear_adapter_cache()
        config.forget()  # settings are this process's own: no new version for the others
