"""The demo project's own middleware: what a host project typically adds."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

SERVED_BY = "llm-gateway-demo"


class ServedByMiddleware:
    """Adds ``X-Served-By`` to every response; async-capable, as Django recommends."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        response = self.get_response(request)
        response["X-Served-By"] = SERVED_BY
        return response

    async def __acall__(self, request):
        response = await self.get_response(request)
        response["X-Served-By"] = SERVED_BY
        return response
