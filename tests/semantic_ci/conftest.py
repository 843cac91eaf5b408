"""Fixtures of the semantic CI tests: `ci_repo`, a repository with the BASIC mvc.toml and held-out
text. Puts this directory on sys.path (pytest runs with --import-mode=importlib) so that the test
modules import their shared helpers from ci_helpers.py."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from ci_helpers import BASIC, write_config, write_held_out  # noqa: E402


@pytest.fixture
def ci_repo(repo):
    write_config(repo, BASIC)
    write_held_out(repo)
    return repo
