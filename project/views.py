"""The demo's chat page."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from llm_integration.models import ModelAlias


@login_required
def chat_page(request):
    aliases = ModelAlias.objects.filter(enabled=True, provider__enabled=True).select_related(
        "provider"
    )
    return render(request, "chat.html", {"aliases": aliases})
