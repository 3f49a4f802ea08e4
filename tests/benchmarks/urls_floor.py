"""The demo's URLconf with the floor view in front (benchmarks only)."""

from django.urls import path

from project.urls import urlpatterns as demo

from .floor import forward

urlpatterns = [path("bench-floor/v1/chat/completions", forward), *demo]
