"""Skips that are visible and, under IMPASTO_STRICT_TESTS=1 (which .ci/run sets), failures:
a green strict run has compared everything and run every tool."""

import importlib
import os

import pytest


def strict():
    return os.environ.get("IMPASTO_STRICT_TESTS") == "1"


def skip(why):
    """Skip the test for want of something the machine could have, or fail under strict."""
    if strict():
        pytest.fail(f"{why} (IMPASTO_STRICT_TESTS=1 makes a skipped test a failure)")
    pytest.skip(f"SKIPPED: {why}")


def need(module, why):
    """The module, or a skip (a failure under strict) saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip(why)
