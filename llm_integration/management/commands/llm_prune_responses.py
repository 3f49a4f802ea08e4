"""Delete stored conversations of the Responses API (``store``) idle for longer than an
age, whole, in batches.

OpenAI keeps responses for 30 days; run from cron to do likewise:

0 4 * * * cd /srv/app && python manage.py llm_prune_responses --older-than 30d

A conversation goes when its newest response is older than the age: one still being
continued keeps its first turns, which its next request replays.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Max
from django.utils import timezone

from ...models import StoredResponse
from ...services.memory.responses import prune
from .llm_prune_usage import parse_age


class Command(BaseCommand):
    help = "Delete stored conversations idle for longer than an age, whole, in batches."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", required=True, metavar="AGE", help="e.g. 30d (days), 4w, 36h"
        )
        parser.add_argument(
            "--batch-size", type=int, default=100, help="Conversations deleted per batch."
        )
        parser.add_argument("--dry-run", action="store_true", help="Only count.")

    def handle(self, *args, older_than: str, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.", returncode=2)
        cutoff = timezone.now() - parse_age(older_than)
        when = f"{cutoff:%Y-%m-%d %H:%M}"
        if dry_run:
            idle = (
                StoredResponse.objects.values("thread")
                .annotate(newest=Max("created_at"))
                .filter(newest__lt=cutoff)
                .count()
            )
            self.stdout.write(f"{idle} conversations idle since before {when} would be deleted.")
            return
        deleted = prune(cutoff, batch_size)
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} stored responses idle since before {when}.")
        )
