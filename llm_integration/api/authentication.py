"""DRF token authentication that accepts both ``Token <key>`` and ``Bearer <key>``.

OpenAI SDKs send ``Authorization: Bearer <api_key>``; give them the user's DRF token.
"""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed


class BearerOrTokenAuthentication(TokenAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request):
        auth = get_authorization_header(request).split()
        if not auth or auth[0].lower().decode(errors="replace") not in self.keywords:
            return None
        if len(auth) != 2:
            raise AuthenticationFailed("Invalid token header: give one token after the scheme.")
        try:
            token = auth[1].decode()
        except UnicodeError:
            raise AuthenticationFailed("Invalid token header: non-ASCII characters.") from None
        return self.authenticate_credentials(token)

    def authenticate_header(self, request) -> str:
        return "Bearer"
