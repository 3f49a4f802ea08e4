"""Signals the app sends, and the receivers it connects in ``AppConfig.ready``."""

from __future__ import annotations

from django.core.signals import setting_changed
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal, receiver

from .models import ModelAlias, Provider

#: Sent once per budget, period and threshold: kwargs budget, threshold, spent_usd, limit_usd.
budget_threshold_reached = Signal()


@receiver([post_save, post_delete], sender=Provider)
@receiver([post_save, post_delete], sender=ModelAlias)
def _forget_adapters(**kwargs) -> None:
    # Other processes notice through the rows' updated_at; this frees memory at once.
    from .services.providers import clear_adapter_cache

    clear_adapter_cache()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    if setting == "LLM_INTEGRATION":
        from .services.providers import clear_adapter_cache

        clear_adapter_cache()
