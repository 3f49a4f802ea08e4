"""Check the providers (for cron): one line per provider, or JSON; exit 0 all reachable,
1 any down, 2 bad usage. A provider this process cannot judge (its key is not in this
environment) is ``unknown``, not down, and no circuit changes for it.

    */5 * * * * cd /srv/app && python manage.py llm_healthcheck --json >> /var/log/llm-health.log
"""

from __future__ import annotations

import json

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from ...models import HealthCheck, Provider
from ...services.ops.health import check_providers


class Command(BaseCommand):
    help = "Probe the LLM providers; store a health-check row each; exit 1 if any is down."

    def add_arguments(self, parser):
        parser.add_argument(
            "--provider",
            action="append",
            dest="providers",
            metavar="NAME",
            help="Only this provider (repeatable). Default: every enabled one.",
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON list.")
        parser.add_argument(
            "--timeout",
            type=float,
            default=5.0,
            metavar="SECONDS",
            help="Give up on a provider after this long (default 5).",
        )

    def handle(self, *args, providers=None, json=False, timeout=5.0, **options):
        if not timeout or timeout <= 0:
            raise CommandError("--timeout must be a positive number of seconds.", returncode=2)
        if providers:
            known = set(Provider.objects.filter(name__in=providers).values_list("name", flat=True))
            unknown = sorted(set(providers) - known)
            if unknown:
                raise CommandError(f"Unknown provider(s): {', '.join(unknown)}.", returncode=2)
        results = async_to_sync(check_providers)(providers, probe_timeout=timeout)
        if json:
            self.stdout.write(_json_dumps([r.as_dict() for r in results]))
        else:
            self.print_table(results)
        if any(r.status == HealthCheck.Status.DOWN for r in results):
            raise SystemExit(1)

    def print_table(self, results) -> None:
        if not results:
            self.stdout.write("No providers to check.")
            return
        width = max(len(r.provider.name) for r in results)
        styles = {
            "connected": self.style.SUCCESS,
            "slow": self.style.WARNING,
            "down": self.style.ERROR,
            "unknown": self.style.WARNING,
        }
        for r in results:
            latency = f"{r.latency_ms} ms" if r.latency_ms is not None else "-"
            line = f"{r.provider.name:<{width}}  {r.status:<9}  {latency:>8}"
            if r.error:
                line += f"  {r.error}"
            self.stdout.write(styles[r.status](line))


def _json_dumps(data) -> str:
    return json.dumps(data, indent=2)
