"""The demo project's ASGI application with Django's stock handler for HTTP, instead
of ``llm_integration.asgi``'s thread-reusing one (``bench_concurrency.py --handler
django``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_app = get_asgi_application()

from project import asgi  # noqa: E402

application = asgi.ProtocolTypeRouter({**asgi.application.application_mapping, "http": django_app})
