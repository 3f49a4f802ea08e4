from django.apps import AppConfig


class LLMIntegrationConfig(AppConfig):
    name = "llm_integration"
    verbose_name = "LLM gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, consumers, signals  # noqa: F401  (checks and receivers)
        from .api import schema  # noqa: F401  (OpenAPI extensions)
