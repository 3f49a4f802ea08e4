"""The error envelope (``llm_integration.envelope``) as DRF and Django responses, and the
envelope 404 for unknown paths under the API's prefixes."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf
from rest_framework.response import Response

from ..envelope import envelope


def error_response(error: BaseException, *, request_id: str, openai: bool = False) -> Response:
    body, status, headers = envelope(error, request_id=request_id, openai=openai)
    return Response(body, status=status, headers=headers)


def error_json(error: BaseException, *, request_id: str, openai: bool = False) -> JsonResponse:
    """The envelope as a plain Django response (outside DRF's rendering)."""
    body, status, headers = envelope(error, request_id=request_id, openai=openai)
    return JsonResponse(body, status=status, headers=headers)


@csrf_exempt  # it changes nothing: a token client's POST gets the 404, not CSRF's 403
def api_not_found(request, *args, **kwargs) -> JsonResponse:
    """An unknown path under the API's prefix: 404 in the envelope, not an HTML page."""
    from ..services.chat import new_request_id

    error = drf.NotFound(f"There is no API endpoint at {request.path}.")
    return error_json(error, request_id=new_request_id())


@csrf_exempt  # as api_not_found
def openai_not_found(request, *args, **kwargs) -> JsonResponse:
    """An unknown path under ``/v1``: 404 in OpenAI's error shape."""
    from ..services.chat import new_request_id

    error = drf.NotFound(f"There is no API endpoint at {request.path}.")
    return error_json(error, request_id=new_request_id(), openai=True)
