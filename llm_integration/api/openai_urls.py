"""The ``/v1`` routes: OpenAI-compatible, and Anthropic's Messages API. Include under
``v1/``."""

from django.urls import path, re_path

from .anthropic_views import CountTokensView, MessagesView
from .errors import openai_not_found
from .openai_views import (
    ChatCompletionsView,
    EmbeddingsView,
    OpenAIModelsView,
    OpenAIModelView,
)
from .responses_views import ResponsesView, ResponseView

app_name = "llm_openai"

urlpatterns = [
    path("models", OpenAIModelsView.as_view(), name="models"),
    path("models/<path:model>", OpenAIModelView.as_view(), name="model"),
    path("chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
    path("embeddings", EmbeddingsView.as_view(), name="embeddings"),
    path("responses", ResponsesView.as_view(), name="responses"),
    path("responses/<str:response_id>", ResponseView.as_view(), name="response"),
    path("messages", MessagesView.as_view(), name="messages"),
    path("messages/count_tokens", CountTokensView.as_view(), name="messages-count-tokens"),
    re_path(r"", openai_not_found),  # anything else under /v1: 404, OpenAI-shaped
]
