"""Upsert providers and aliases from the seed's environment variables or a LiteLLM
proxy ``config.yaml`` (``--config FILE``). Idempotent; prints what it did."""

from __future__ import annotations

import os

import yaml
from django.core.management.base import BaseCommand, CommandError

from ...services.config.bootstrap import (
    BootstrapError,
    bootstrap_from_env,
    bootstrap_from_litellm_config,
)


class Command(BaseCommand):
    help = (
        "Create or update the provider, the 'default' alias and the global budget from "
        "LLM_BACKEND & co., or import a LiteLLM proxy config.yaml with --config."
    )

    def add_arguments(self, parser):
        parser.add_argument("--config", metavar="FILE", help="A LiteLLM proxy config.yaml.")

    def handle(self, *args, config: str | None = None, **options):
        env = dict(os.environ)  # the one command that reads the environment (CONTRACT §2)
        try:
            if config:
                try:
                    with open(config, encoding="utf-8") as fh:
                        data = yaml.safe_load(fh)
                except OSError as e:
                    raise CommandError(f"Cannot read {config}: {e.strerror}.") from None
                except yaml.YAMLError as e:
                    raise CommandError(f"{config} is not valid YAML: {e}") from None
                report = bootstrap_from_litellm_config(data, env)
            else:
                report = bootstrap_from_env(env)
        except BootstrapError as e:
            raise CommandError(str(e)) from None
        for line in report.lines:
            style = self.style.SUCCESS if line.startswith(("created", "updated")) else str
            self.stdout.write(style(line))
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
