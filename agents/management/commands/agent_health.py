"""``manage.py agent_health --name NAME``: exit 0 if that agent is registered.

For container health checks: an agent counts as healthy while its heartbeat is
in Redis.  It needs only ``REDIS_URL`` (or the Sentinel settings), like the
agent itself.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from balancer import keys, redis_connection


class Command(BaseCommand):
    help = "Exit 0 when the named agent has a live heartbeat in Redis."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        client = redis_connection.sync_client(settings.REDIS_URL, socket_timeout=5)
        for member in client.smembers(keys.agents_set()):
            agent_id = member.decode() if isinstance(member, bytes) else str(member)
            raw = client.get(keys.agent_status(agent_id))
            if raw is not None and json.loads(raw).get("name") == options["name"]:
                self.stdout.write(f"agent {options['name']} is alive")
                return
        raise CommandError(f"no live agent named {options['name']}")
