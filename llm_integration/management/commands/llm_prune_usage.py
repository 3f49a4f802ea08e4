"""Delete old usage records in batches (budget counters are separate and untouched).

0 3 * * * cd /srv/app && python manage.py llm_prune_usage --older-than 90d
"""

from __future__ import annotations

import datetime as dt
import re

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...models import UsageRecord

UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str, option: str = "--older-than") -> dt.timedelta:
    match = re.fullmatch(r"(\d+)([hdw])", text.strip())
    if not match:
        raise CommandError(f"{option} takes a number and a unit: 36h, 90d or 12w.", returncode=2)
    return dt.timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = "Delete usage records older than an age, in batches."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help="e.g. 90d (days), 12w (weeks), 36h (hours)",
        )
        parser.add_argument("--batch-size", type=int, default=10_000)
        parser.add_argument("--dry-run", action="store_true", help="Only count.")

    def handle(self, *args, older_than: str, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.", returncode=2)
        cutoff = timezone.now() - parse_age(older_than)
        old = UsageRecord.objects.filter(created_at__lt=cutoff)
        if dry_run:
            self.stdout.write(
                f"{old.count()} usage records older than {cutoff:%Y-%m-%d %H:%M} would be deleted."
            )
            return
        deleted = 0
        while True:
            ids = list(old.order_by().values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            deleted += UsageRecord.objects.filter(pk__in=ids).delete()[0]
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {deleted} usage records older than {cutoff:%Y-%m-%d %H:%M}."
            )
        )
