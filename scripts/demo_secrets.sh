#!/usr/bin/env bash
# `make run`'s secrets, kept in DIR (var/) for the operator's user only: DIR
# 0700, and 0600 files: the management token and Django's secret key (one key
# for every process of the demo, kept across restarts so that panel logins
# survive them).  Files an older `make run` left readable to other users
# (these, the demo password, the SQLite database) are tightened to 0600.
# Existing secrets are kept.
#
#   scripts/demo_secrets.sh DIR
set -euo pipefail
dir=${1:?usage: scripts/demo_secrets.sh DIR}
python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
# Whatever is created below is private, even between its creation and a chmod.
umask 077
mkdir -p "$dir"
# Everything in it is the demo's own state; scripts/setup.sh may have made it
# (for the models) before, with the default umask.
chmod 700 "$dir"

for name in management-token secret-key; do
  if [ ! -s "$dir/$name" ]; then
    "$python" -c "import secrets; print(secrets.token_urlsafe(50))" > "$dir/$name"
  fi
done
for file in "$dir"/management-token "$dir"/secret-key "$dir"/demo-password \
  "$dir"/db.sqlite3 "$dir"/db.sqlite3-journal "$dir"/db.sqlite3-wal "$dir"/db.sqlite3-shm; do
  if [ -f "$file" ]; then chmod 600 "$file"; fi
done
