"""ASGI entry point: HTTP through Django, WebSockets through Channels.

Serve with `daphne project.asgi:application` (or `python manage.py llm_demo`), or
`uvicorn project.asgi:application`. Every HTTP request goes through Django's handler,
`MIDDLEWARE` and the URLconf; this file only adds WebSockets and the lifespan protocol.
"""

import os
import sys

from llm_integration.asgi import get_asgi_application

# The accounting writer is a thread: when it needs the GIL (after each SQL statement)
# while the event loop runs Python, it waits for the loop's next switch, 5 ms by
# default. 1 ms keeps the usage records' commits (which every answer waits for) short
# under load; see docs/benchmarks.md.
sys.setswitchinterval(0.001)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Django's handler, running the project's (synchronous) middleware in each request's
# thread in one hand-off and keeping those threads
# (llm_integration.asgi.ThreadedMiddlewareASGIHandler); django.core.asgi's works the same.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from llm_integration.asgi import lifespan  # noqa: E402
from llm_integration.routing import (  # noqa: E402
    AllowedHostsOriginValidator,
    websocket_urlpatterns,
)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        # Uvicorn: at shutdown, commit queued accounting, give budget allowances back.
        "lifespan": lifespan,
    }
)
