"""llm_settings: defaults, overrides read at call time, typos reported."""

from __future__ import annotations

import pytest

from llm_integration.conf import DEFAULTS, llm_settings
from llm_integration.secrets import environ_secret


def test_defaults_and_override_reload(settings):
    assert llm_settings.DEFAULT_PLAN == DEFAULTS["DEFAULT_PLAN"]
    settings.LLM_INTEGRATION = {"DEFAULT_PLAN": "gold"}
    assert llm_settings.DEFAULT_PLAN == "gold"
    settings.LLM_INTEGRATION = {}
    assert llm_settings.DEFAULT_PLAN == "free"


def test_unknown_attribute_and_keys(settings):
    with pytest.raises(AttributeError):
        llm_settings.NOT_A_SETTING  # noqa: B018
    settings.LLM_INTEGRATION = {"CACHE_TLL": 5, "CACHE_TTL": 5}
    assert llm_settings.unknown_keys() == ["CACHE_TLL"]


def test_secret_resolver_is_an_import_string(settings, monkeypatch):
    monkeypatch.setenv("SOME_KEY", "v")
    assert llm_settings.SECRET_RESOLVER is environ_secret
    assert llm_settings.SECRET_RESOLVER("SOME_KEY") == "v"
    assert environ_secret("") is None


def test_the_seeds_cache_size_bounds_the_response_cache(tmp_path):
    import os
    import subprocess
    import sys

    from django.conf import settings

    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "from llm_integration.conf import llm_settings as l; "
        "print(s.CACHES[l.RESPONSE_CACHE_BACKEND]['OPTIONS']['MAX_ENTRIES'])"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "LLM_CACHE_SIZE": "7"}
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True
    )
    assert out.stdout.strip() == "7", out.stderr
