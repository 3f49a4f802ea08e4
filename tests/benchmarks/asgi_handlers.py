"""The demo project's ASGI application with another handler for HTTP than the one it
opts into (``bench_concurrency.py --handler``): ``django`` (Django's stock handler) or
``reusing`` (``ThreadReusingASGIHandler``: threads kept, middleware hooks each handed
to the request's thread as Django does), named by ``BENCH_HANDLER``."""

import os

from django.core.asgi import get_asgi_application as django_application

from llm_integration.asgi import ThreadReusingASGIHandler
from llm_integration.asgi import get_asgi_application as llm_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
HANDLERS = {
    "django": django_application,
    "reusing": lambda: llm_application(ThreadReusingASGIHandler),
}
http_app = HANDLERS[os.environ["BENCH_HANDLER"]]()

from project import asgi  # noqa: E402

application = asgi.ProtocolTypeRouter({**asgi.application.application_mapping, "http": http_app})
