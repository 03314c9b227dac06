"""``manage.py ensure_demo_user``: the demo's admin login, printed for the README."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


def read_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``, made on first use; for this user only.

    The file is created 0600 (its parent 0700 when created here) whatever the
    umask, so that no other user of the host reads it even for a moment; one
    that an older version left readable is tightened.
    """
    if path.exists():
        path.chmod(0o600)
        return path.read_text().strip()
    secret = secrets.token_urlsafe(12)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL: a file (or link) put there meanwhile is not written through.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


class Command(BaseCommand):
    help = "Create (or reset) the demo staff login 'admin' and print its password."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file",
            type=Path,
            default=Path(settings.BASE_DIR) / "var" / "demo-password",
            help="where the password is kept (default: var/demo-password)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        password = read_or_create_secret(options["password_file"])
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username="admin")
        user.is_staff = True
        user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(password)
