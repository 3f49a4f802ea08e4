from django.apps import AppConfig


class LLMIntegrationConfig(AppConfig):
    name = "llm_integration"
    verbose_name = "LLM gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, consumers  # noqa: F401  (system checks; the alerts' receiver)
        from .api import schema  # noqa: F401  (OpenAPI extensions)
        from .services.config import invalidation  # noqa: F401  (config receivers)
