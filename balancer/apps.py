from __future__ import annotations

from django.apps import AppConfig


class BalancerConfig(AppConfig):
    name = "balancer"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from balancer import redis_writes

        # The schema's description of our authentication classes.
        from balancer.api import schema  # noqa: F401

        # Every Redis command of every process: no task per write.
        redis_writes.install()
