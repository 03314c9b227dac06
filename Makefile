.PHONY: run test setup lint typecheck pytest

# Sets everything up, then runs the web tier, Redis and one demo agent.
run:
	scripts/run.sh

# The whole suite: format, lint, types, then the tests.
test: setup lint typecheck pytest

setup:
	scripts/setup.sh

lint:
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

typecheck:
	.venv/bin/mypy .

pytest:
	.venv/bin/pytest
