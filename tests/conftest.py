"""Shared test set-up: a test salt in the environment for the whole session (module- and session-scoped
fixtures included), so no test writes a salt file into the repository.

Tests of the salt itself remove it (``monkeypatch.delenv``) and point ``ingest.salt_file`` at a
temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from metastases.ingest.keys import SALT_ENV

TEST_SALT = "test-salt-0123456789abcdef-not-secret"


@pytest.fixture(autouse=True, scope="session")
def _test_salt() -> Iterator[None]:
    before = os.environ.get(SALT_ENV)
    os.environ[SALT_ENV] = TEST_SALT
    yield
    if before is None:
        os.environ.pop(SALT_ENV, None)
    else:
        os.environ[SALT_ENV] = before
