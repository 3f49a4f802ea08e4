"""REST API routes: include under ``api/v1/``."""

from django.urls import path

from .views import ChatView, ModelListView, UsageView

app_name = "llm_api"

urlpatterns = [
    path("models", ModelListView.as_view(), name="models"),
    path("chat", ChatView.as_view(), name="chat"),
    path("usage", UsageView.as_view(), name="usage"),
]
