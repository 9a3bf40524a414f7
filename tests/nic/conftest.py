"""A running emulated IFC card per test (dataplane.testing.nic_card.CardProc)."""

import os
import shutil
import tempfile

import pytest

from dataplane.testing.nic_card import CardProc


@pytest.fixture
def runtime():
    """A short runtime parent (unix socket paths are limited to 108 bytes; pytest's tmp_path is long)."""
    d = tempfile.mkdtemp(prefix="nic", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def card(runtime):
    c = CardProc(runtime)
    try:
        yield c
    finally:
        c.stop()
    assert not os.path.exists(c.dir), "the card left its directory"
