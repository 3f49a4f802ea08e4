"""WebSocket routes, the Channels convention: include in the project's ProtocolTypeRouter."""

from django.urls import path

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/llm/chat/", ChatConsumer.as_asgi()),
]
