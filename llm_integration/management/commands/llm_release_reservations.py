"""Release budget reservations that nobody holds any more (for cron).

A process that is killed (SIGKILL, a crash, a Uvicorn worker without the ``lifespan``
app) never settles the reservations of its requests in flight nor gives back its
unused budget allowance: they stay in ``reserved`` and shrink the budget's room. A
live process touches a budget's row whenever one of its requests on that budget ends,
and gives its unused allowance back after ``BUDGET_ALLOWANCE_IDLE`` seconds; so a row
nobody has written for longer than any request runs holds nothing that is still
needed. This sets such rows' ``reserved`` to zero.

15 * * * * cd /srv/app && python manage.py llm_release_reservations --idle-for 24h
"""

from __future__ import annotations

import math

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...conf import llm_settings
from ...models import BudgetPeriod, units_to_usd
from .llm_prune_usage import parse_age


class Command(BaseCommand):
    help = "Release the reserved money of budget rows nobody has written for a while."

    def add_arguments(self, parser):
        parser.add_argument(
            "--idle-for",
            default="24h",
            metavar="AGE",
            help="rows not written for this long: 24h (default), 2d, 1w",
        )
        parser.add_argument("--dry-run", action="store_true", help="Only list them.")

    def handle(self, *args, idle_for: str, dry_run: bool, **options):
        age = parse_age(idle_for, "--idle-for")
        floor = float(llm_settings.REQUEST_DEADLINE) + float(llm_settings.BUDGET_ALLOWANCE_IDLE)
        if age.total_seconds() < max(3600.0, floor):
            raise CommandError(
                f"--idle-for must be at least 1h (and above REQUEST_DEADLINE + "
                f"BUDGET_ALLOWANCE_IDLE, {math.ceil(floor)} s): a shorter one could release "
                "what a live request holds.",
                returncode=2,
            )
        cutoff = timezone.now() - age
        stale = BudgetPeriod.objects.filter(reserved_units__gt=0, updated_at__lt=cutoff)
        rows = list(stale.select_related("budget").order_by("pk"))
        for row in rows:
            self.stdout.write(
                f"{row.budget.name} from {row.period_start:%Y-%m-%d}: "
                f"${units_to_usd(row.reserved_units)} reserved, last written "
                f"{row.updated_at:%Y-%m-%d %H:%M}"
            )
        if dry_run:
            self.stdout.write(f"{len(rows)} budget rows would be released.")
            return
        # The same condition again: a row written since the listing is left alone.
        released = BudgetPeriod.objects.filter(
            pk__in=[row.pk for row in rows], reserved_units__gt=0, updated_at__lt=cutoff
        ).update(reserved_units=0, updated_at=timezone.now())
        self.stdout.write(self.style.SUCCESS(f"Released {released} budget rows."))
