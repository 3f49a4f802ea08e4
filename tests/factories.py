"""factory-boy factories for the app's rows."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from llm_integration import models


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.Faker("email")
    password = factory.django.Password("password")


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Provider

    name = factory.Sequence(lambda n: f"provider-{n}")
    kind = models.Provider.Kind.DUMMY
    timeout_seconds = 5.0
    max_retries = 0


class ModelAliasFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.ModelAlias

    slug = factory.Sequence(lambda n: f"alias-{n}")
    label = factory.Faker("sentence", nb_words=2)
    provider = factory.SubFactory(ProviderFactory)
    upstream_model = "echo"
    input_price_per_mtok = Decimal("1.00")
    output_price_per_mtok = Decimal("2.00")


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Plan
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class PlanEntitlementFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.PlanEntitlement

    plan = factory.SubFactory(PlanFactory)
    alias = factory.SubFactory(ModelAliasFactory)


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Subscription

    user = factory.SubFactory(UserFactory)
    plan = factory.SubFactory(PlanFactory)


class BudgetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Budget

    name = factory.Sequence(lambda n: f"budget-{n}")
    scope = models.Budget.Scope.GLOBAL
    period = models.Budget.Period.MONTH
    limit_usd = Decimal("10.00")


class UsageRecordFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.UsageRecord

    request_id = factory.Sequence(lambda n: f"req_{n:032x}")
    user = factory.SubFactory(UserFactory)
    alias = "default"
    provider = "dummy"
    upstream_model = "echo"
    prompt_tokens = 10
    completion_tokens = 20
    cost_usd = Decimal("0.00005")
    status = models.UsageRecord.Status.OK
