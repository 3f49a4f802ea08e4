"""REST API routes: include under ``api/v1/``."""

from django.urls import include, path, re_path

from .conversation_views import ConversationMessagesView, ConversationsView, ConversationView
from .errors import api_not_found
from .keys import KeyDetailView, KeyListView
from .views import ChatView, ModelListView, UsageView

app_name = "llm_api"

urlpatterns = [
    path("models", ModelListView.as_view(), name="models"),
    path("chat", ChatView.as_view(), name="chat"),
    path("usage", UsageView.as_view(), name="usage"),
    path("keys", KeyListView.as_view(), name="keys"),
    path("keys/<int:pk>", KeyDetailView.as_view(), name="key"),
    path("conversations", ConversationsView.as_view(), name="conversations"),
    path("conversations/<str:conversation_id>", ConversationView.as_view(), name="conversation"),
    path(
        "conversations/<str:conversation_id>/messages",
        ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
    path("admin/", include("llm_integration.api.admin_api.urls")),
    re_path(r"", api_not_found),  # anything else under the prefix: 404 in the envelope
]
