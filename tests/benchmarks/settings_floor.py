"""The demo project plus the floor view (``floor.py``) at
``/bench-floor/v1/chat/completions``: everything else as the demo serves it."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.benchmarks.urls_floor"
