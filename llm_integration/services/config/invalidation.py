"""Every process drops its snapshot of the configuration rows when one changes (admin, the
API, a shell) and when ``LLM_INTEGRATION`` changes (tests' ``override_settings``).
Connected in ``AppConfig.ready``."""

from __future__ import annotations

from django.core.signals import setting_changed
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from ...models import (
    AliasFallback,
    Budget,
    ModelAlias,
    Plan,
    PlanEntitlement,
    Provider,
    RoutingRule,
    Subscription,
)
from .providers import clear_adapter_cache
from .snapshot import config, invalidate

CONFIG_MODELS = (
    Provider,
    ModelAlias,
    AliasFallback,
    Plan,
    PlanEntitlement,
    Subscription,
    Budget,
    RoutingRule,
)


def _config_changed(sender, **kwargs) -> None:
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
        clear_adapter_cache()
        config.forget()  # settings are this process's own: no new version for the others
