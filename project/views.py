"""The demo's chat page: models from /api/v1/models, tokens over ws/llm/chat/."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def chat_page(request):
    return render(request, "chat.html")
