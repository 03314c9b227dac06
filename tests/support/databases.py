"""Fresh, migrated databases for the web servers the tests start.

Running ``manage.py migrate`` took about 8 s of every web server's start on a
loaded machine, and the suite starts dozens.  Under SQLite the migrations run
once per test process, into a template (a file, or a PostgreSQL template
database), and each web server gets a copy:
as fresh as a migrated database of its own.  No migration depends on a
``PADDLER_`` setting, so one run serves every configuration a test starts.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.constants import ROOT
from tests.support.processes import service_env

# Migrations do not reach Redis; settings only need its URL to be well formed.
UNUSED_REDIS_URL = "redis://127.0.0.1:1/0"


def migrate(database_url: str) -> None:
    env = service_env(UNUSED_REDIS_URL, DATABASE_URL=database_url)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
    )


@functools.cache
def migrated_sqlite_template() -> Path:
    """A SQLite file with every migration applied, built on first use.

    It lives outside any test's directory, for the whole test process, and is
    removed when the process exits.
    """
    directory = Path(tempfile.mkdtemp(prefix="paddler-migrated-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    template = directory / "template.sqlite3"
    migrate(f"sqlite:///{template}")
    return template


def web_database(tmp_path: Path, port: int) -> str:
    """A fresh, migrated database for one web server.

    Under PostgreSQL (``DATABASE_URL``, as in CI, the production database) a new
    database on that server, copied from a migrated template database;
    otherwise a copy of the migrated SQLite template.
    """
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        path = tmp_path / f"web-{port}.sqlite3"
        shutil.copyfile(migrated_sqlite_template(), path)
        return f"sqlite:///{path}"
    import psycopg

    name = f"paddler_e2e_{os.getpid()}_{port}"
    template = migrated_postgres_template(base)
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _database_url(base, name)


def _database_url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + f"/{name}"


@functools.cache
def migrated_postgres_template(base: str) -> str:
    """The name of a PostgreSQL database with every migration applied, made on
    first use and dropped when the test process exits: each web server's
    database is a copy of it (``CREATE DATABASE ... TEMPLATE``), as under
    SQLite.  Nothing stays connected to it, which copying requires."""
    import psycopg

    name = f"paddler_e2e_{os.getpid()}_template"
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    migrate(_database_url(base, name))
    atexit.register(drop_web_database, _database_url(base, name))
    return name


def drop_web_database(url: str) -> None:
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
