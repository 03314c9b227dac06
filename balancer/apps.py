from __future__ import annotations

from django.apps import AppConfig


class BalancerConfig(AppConfig):
    name = "balancer"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The schema's description of our authentication classes.
        from balancer.api import schema  # noqa: F401
