from django.apps import AppConfig


class LLMIntegrationConfig(AppConfig):
    name = "llm_integration"
    verbose_name = "LLM gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401  (registers checks and receivers)
        from .api import schema  # noqa: F401  (OpenAPI extensions)
