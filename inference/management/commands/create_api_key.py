"""``manage.py create_api_key NAME``: a new inference API key, shown once."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.services import inference_api_key_create


class Command(BaseCommand):
    help = (
        "Create an inference API key and print it. Only its hash is stored: "
        "copy it now, it cannot be shown again."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", help="who or what the key is for")

    def handle(self, *args: Any, **options: Any) -> None:
        name = str(options["name"]).strip()
        if not name or len(name) > 100:
            raise CommandError("the name must be 1 to 100 characters")
        key, plaintext = inference_api_key_create(name=name)
        # The key alone on stdout, so scripts can capture it; the rest on stderr.
        self.stdout.write(plaintext)
        self.stderr.write(f"created key {key.prefix} for {key.name!r}")
