"""``manage.py revoke_api_key PREFIX``: revoke an inference API key."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.models import InferenceApiKey
from inference.services import inference_api_key_revoke


class Command(BaseCommand):
    help = "Revoke an inference API key, given its prefix or the whole key."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("key", help="the key's 12-character prefix, or the key")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = inference_api_key_revoke(prefix=str(options["key"]).strip())
        except InferenceApiKey.DoesNotExist:
            raise CommandError("no such key") from None
        self.stdout.write(f"revoked key {key.prefix} ({key.name})")
