"""The demo project with async-native middleware only (the project's own header
middleware): what the gateway costs without Django's synchronous middleware hooks, each
a thread hop that is the host's cost (``bench_concurrency.py --middleware async-only``)."""

from project.settings import *  # noqa: F403

MIDDLEWARE = ["project.middleware.ServedByMiddleware"]
