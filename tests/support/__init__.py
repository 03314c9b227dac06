"""What the tests start and talk to: servers, fleets, raw clients, constants.

``tests/conftest.py`` holds the fixtures built from these; test files import
the helpers from here, never from ``conftest``.
"""
