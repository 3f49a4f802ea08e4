"""Staff API routes (CONTRACT §9): included by ``llm_integration.api.urls`` under
``admin/``."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter(trailing_slash=False)
router.register("providers", views.ProviderViewSet, basename="provider")
router.register("aliases", views.AliasViewSet, basename="alias")
router.register("plans", views.PlanViewSet, basename="plan")
router.register("subscriptions", views.SubscriptionViewSet, basename="subscription")
router.register("budgets", views.BudgetViewSet, basename="budget")
router.register("routing-rules", views.RoutingRuleViewSet, basename="routing-rule")
router.register("keys", views.ApiKeyViewSet, basename="key")

urlpatterns = [
    path("costs", views.CostsView.as_view(), name="costs"),
    path("health", views.HealthView.as_view(), name="health"),
    *router.urls,
]
