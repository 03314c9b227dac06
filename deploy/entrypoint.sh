#!/bin/sh
# The image's entry point: refuses to start anything but an agent without
# PADDLER_SECRET_KEY, then runs the command.  Without it each web replica would
# sign sessions with a random key of its own (logins lost at every restart and
# whenever the proxy sends a request to the other replica); agents sign
# nothing and need not hold the secret.
set -eu
case "$*" in
  "python manage.py run_agent"* | "python manage.py agent_health"*) ;;
  *)
    if [ -z "${PADDLER_SECRET_KEY:-}" ]; then
      echo "refusing to start: set PADDLER_SECRET_KEY (one secret value, the same" \
        "on every web replica), e.g. from" \
        "python3 -c 'import secrets; print(secrets.token_urlsafe(50))'" >&2
      exit 64
    fi
    ;;
esac
exec "$@"
