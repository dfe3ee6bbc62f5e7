"""Fixtures shared by the test modules (each set lives in its own module)."""

from tests.server_fixtures import *  # noqa: F403
from tests.stores_fixtures import *  # noqa: F403
