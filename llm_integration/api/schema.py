"""OpenAPI descriptions of the API's authentication (drf-spectacular extensions; DRF's
session authentication has drf-spectacular's own)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "llm_integration.api.authentication.BearerOrTokenAuthentication"
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A DRF token or an API key of the gateway, as "
            "`Authorization: Bearer <key>` or `Token <key>`.",
        }


class APIKeyHeaderScheme(OpenApiAuthenticationExtension):
    target_class = "llm_integration.api.anthropic_views.APIKeyHeaderAuthentication"
    name = "apiKeyAuth"
    priority = 2

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "x-api-key",
            "description": "A DRF token, where Anthropic's SDK sends its key (/v1/messages).",
        }


class GatewayKeyScheme(OpenApiAuthenticationExtension):
    target_class = "llm_integration.api.authentication.ApiKeyAuthentication"
    name = "gatewayKeyAuth"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of the gateway (`llm_…`, from /api/v1/keys), as "
            "`Authorization: Bearer <key>`, `Token <key>` or `x-api-key: <key>`.",
        }
