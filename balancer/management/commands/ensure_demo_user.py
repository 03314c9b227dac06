"""``manage.py ensure_demo_user``: the demo's admin login, printed for the README."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create (or reset) the demo staff login 'admin' and print its password."

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = Path(settings.BASE_DIR) / "var" / "demo-password"
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="admin")
        user.is_staff = True
        user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(password)
