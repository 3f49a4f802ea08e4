"""Import a provider's model list as disabled aliases (admin action)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.utils.text import slugify

from ...models import ModelAlias, Provider
from .providers import build_adapter


def _existing(provider: Provider) -> tuple[set[str], set[str]]:
    models = set(
        ModelAlias.objects.filter(provider=provider).values_list("upstream_model", flat=True)
    )
    return models, set(ModelAlias.objects.values_list("slug", flat=True))


def _create(provider: Provider, new: list[str], slugs: set[str]) -> list[ModelAlias]:
    created = []
    for model in new:
        base = slugify(f"{provider.name}-{model.replace('/', '-').replace(':', '-')}")[:90]
        slug, n = base, 2
        while slug in slugs:
            slug, n = f"{base}-{n}", n + 1
        slugs.add(slug)
        created.append(
            ModelAlias.objects.create(
                slug=slug, label=model, provider=provider, upstream_model=model, enabled=False
            )
        )
    return created


async def import_models(provider: Provider) -> list[ModelAlias]:
    """Create a disabled alias for every upstream model not aliased yet; return them."""
    adapter = build_adapter(ModelAlias(provider=provider, upstream_model=""))
    try:
        served = await adapter.list_models() or []
    finally:
        await adapter.aclose()
    known, slugs = await sync_to_async(_existing)(provider)
    new = sorted(m for m in set(served) if m not in known)
    return await sync_to_async(_create)(provider, new, slugs)
