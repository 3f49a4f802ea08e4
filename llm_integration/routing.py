"""WebSocket routes, the Channels convention: include in the project's ProtocolTypeRouter,
behind ``OriginValidator`` and Channels' ``AuthMiddlewareStack``."""

from channels.security.websocket import OriginValidator as ChannelsOriginValidator
from django.conf import settings
from django.urls import path

from .consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/llm/chat/", ChatConsumer.as_asgi()),
]


class OriginValidator(ChannelsOriginValidator):
    """Channels' origin check, for the clients that send an ``Origin`` (browsers, whose
    cookies a foreign page could otherwise ride on). Clients that send none — SDKs,
    mobile apps, scripts — are let through: their credential is the token frame."""

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def AllowedHostsOriginValidator(application):
    """``OriginValidator`` with ``ALLOWED_HOSTS``, as Channels' own factory builds it."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return OriginValidator(application, allowed_hosts)
