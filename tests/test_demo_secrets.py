"""`make run`'s secrets on disk are for the operator's user only."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from tests.support.constants import ROOT


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    # The usual umask, under which a plain write makes a file everyone reads.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def demo_secrets(directory: Path) -> None:
    subprocess.run(
        ["bash", "-c", 'umask 022; exec scripts/demo_secrets.sh "$0"', directory],
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def test_demo_secrets_are_written_for_their_owner_only(tmp_path: Path) -> None:
    var = tmp_path / "var"
    demo_secrets(var)
    assert mode(var) == 0o700
    for name in ("management-token", "secret-key"):
        assert mode(var / name) == 0o600, name
        assert len((var / name).read_text().strip()) >= 50, name


def test_demo_secrets_are_kept_and_old_readable_files_tightened(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    for name in ("management-token", "secret-key", "demo-password", "db.sqlite3"):
        (var / name).write_text(f"old {name}\n")
        (var / name).chmod(0o644)
    demo_secrets(var)
    assert mode(var) == 0o700
    for name in ("management-token", "secret-key", "demo-password", "db.sqlite3"):
        assert (var / name).read_text() == f"old {name}\n"
        assert mode(var / name) == 0o600, name


@pytest.mark.django_db
def test_demo_password_is_written_for_its_owner_only(
    tmp_path: Path, open_umask: None
) -> None:
    password_file = tmp_path / "var" / "demo-password"
    out = io.StringIO()
    call_command("ensure_demo_user", password_file=password_file, stdout=out)
    assert mode(password_file.parent) == 0o700
    assert mode(password_file) == 0o600
    password = password_file.read_text().strip()
    assert out.getvalue().strip() == password
    assert authenticate(username="admin", password=password) is not None


@pytest.mark.django_db
def test_an_old_readable_demo_password_is_kept_and_tightened(
    tmp_path: Path, open_umask: None
) -> None:
    password_file = tmp_path / "demo-password"
    password_file.write_text("old-demo-password\n")
    password_file.chmod(0o644)
    call_command("ensure_demo_user", password_file=password_file, stdout=io.StringIO())
    assert mode(password_file) == 0o600
    assert authenticate(username="admin", password="old-demo-password") is not None
