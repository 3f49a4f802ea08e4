"""Fixtures of the API tests: an alias served by a loopback fake of each protocol."""

from __future__ import annotations

import pytest

from tests.factories import ModelAliasFactory, ProviderFactory

#: The chat upstream kinds every surface is tested against.
KINDS = ("openai", "anthropic", "ollama")
UPSTREAM_MODELS = {
    "openai": "gpt-4o-mini",
    "openai_compatible": "gpt-4o-mini",
    "anthropic": "claude-fake",
    "ollama": "llama3.2",
}


@pytest.fixture
def alias_on(openai_fake, anthropic_fake, ollama_fake, api_key_env):
    """``alias_on(kind, slug, **fields)``: an alias on a provider of ``kind`` pointed at
    that protocol's fake, which it returns."""
    fakes = {
        "openai": openai_fake,
        "openai_compatible": openai_fake,
        "anthropic": anthropic_fake,
        "ollama": ollama_fake,
    }

    def make(kind: str, slug: str, **fields):
        fake = fakes[kind]
        provider = ProviderFactory(
            name=kind, kind=kind, base_url=fake.base_url, api_key_env=api_key_env
        )
        fields.setdefault("upstream_model", UPSTREAM_MODELS[kind])
        ModelAliasFactory(slug=slug, provider=provider, **fields)
        return fake

    return make
