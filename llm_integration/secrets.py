"""Where provider keys come from.

Provider rows store the *name* of the environment variable that holds their key, never
the key. This module is the one place that turns such a name into a value; point the
``SECRET_RESOLVER`` setting at another callable to read keys from a vault instead.
"""

from __future__ import annotations

import os


def environ_secret(name: str) -> str | None:
    """The value of environment variable ``name``, or None when unset or empty."""
    if not name:
        return None
    return os.environ.get(name) or None


def resolve_secret(name: str) -> str | None:
    from .conf import llm_settings

    return llm_settings.SECRET_RESOLVER(name)
