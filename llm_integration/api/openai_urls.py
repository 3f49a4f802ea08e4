"""OpenAI-compatible routes: include under ``v1/``."""

from django.urls import path

from .openai_views import ChatCompletionsView, OpenAIModelsView

app_name = "llm_openai"

urlpatterns = [
    path("models", OpenAIModelsView.as_view(), name="models"),
    path("chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
]
