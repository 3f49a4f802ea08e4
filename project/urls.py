from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView

from llm_integration.api.errors import api_not_found
from llm_integration.api.metrics import metrics_view

from . import views

admin.site.site_header = "LLM gateway"
admin.site.site_title = "LLM gateway"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("llm_integration.api.urls")),
    path("v1/", include("llm_integration.api.openai_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("metrics", metrics_view, name="metrics"),
    re_path(r"^api/", api_not_found),  # the rest of /api/: 404 in the API's envelope
]
