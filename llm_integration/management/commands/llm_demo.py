"""Prepare and serve the demo: migrate, seed demo rows, print a token, run Daphne."""

from __future__ import annotations

import os
import socket
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ...models import ModelAlias, Plan, PlanEntitlement, Provider


class Command(BaseCommand):
    help = "Migrate, create demo rows (dummy provider, aliases, plans, admin/admin) and serve."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-serve", action="store_true", help="Only prepare; do not serve.")

    def handle(self, *args, host: str, port: int, no_serve: bool, **options):
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(self.style.SUCCESS("Database migrated."))
        self.seed()
        token = self.admin_token()
        if token:
            self.stdout.write(f"API token of 'admin': {token}")
        if not no_serve:
            self.serve(host, port)

    @transaction.atomic
    def seed(self) -> None:
        dummy, _ = Provider.objects.get_or_create(
            name="dummy",
            defaults={"kind": Provider.Kind.DUMMY, "options": {"delay": 0.03}},
        )
        chat, embedding = ModelAlias.Mode.CHAT, ModelAlias.Mode.EMBEDDING
        aliases = [
            ("default", "Dummy echo", Decimal("0"), Decimal("0"), 0, chat),
            ("dummy-premium", "Dummy premium (priced)", Decimal("2.50"), Decimal("10.00"), 1, chat),
            ("dummy-embed", "Dummy embeddings", Decimal("0.02"), Decimal("0"), 2, embedding),
        ]
        created = []
        for slug, label, price_in, price_out, order, mode in aliases:
            _, was_created = ModelAlias.objects.get_or_create(
                slug=slug,
                defaults={
                    "label": label,
                    "provider": dummy,
                    "upstream_model": "echo",
                    "input_price_per_mtok": price_in,
                    "output_price_per_mtok": price_out,
                    "context_window": 8192,
                    "sort_order": order,
                    "mode": mode,
                },
            )
            if was_created:
                created.append(slug)
        free, _ = Plan.objects.get_or_create(slug="free", defaults={"name": "Free"})
        pro, _ = Plan.objects.get_or_create(slug="pro", defaults={"name": "Pro"})
        for plan, slugs in ((free, ["default"]), (pro, ["default", "dummy-premium"])):
            for slug in slugs:
                alias = ModelAlias.objects.filter(slug=slug).first()
                if alias is not None:
                    PlanEntitlement.objects.get_or_create(plan=plan, alias=alias)
        self.stdout.write(
            self.style.SUCCESS("Demo rows ready")
            + (f" (created aliases: {', '.join(created)})." if created else " (already there).")
        )

    def admin_token(self) -> str | None:
        from rest_framework.authtoken.models import Token

        User = get_user_model()
        if not User.objects.exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write(self.style.SUCCESS("Created superuser admin / admin."))
        admin = User.objects.filter(username="admin").first()
        if admin is None:
            return None
        return Token.objects.get_or_create(user=admin)[0].key

    def serve(self, host: str, port: int) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
        from django.utils.module_loading import import_string

        try:  # Daphne would report a taken port in its log and still exit 0
            with socket.create_server((host, port)):
                pass
        except OSError as error:
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise CommandError(f"Cannot serve on {host}:{port}: {reason}.") from None
        application = ASGIStaticFilesHandler(import_string(settings.ASGI_APPLICATION))
        self.stdout.write(
            self.style.SUCCESS(
                f"Serving on http://{host}:{port}/ (admin at /admin/). Ctrl-C stops."
            )
        )
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
        ).run()
