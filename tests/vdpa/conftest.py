"""Fixtures for the vdpa management tests: a service on a private runtime directory."""

import io
import os

import pytest

from dataplane.testing.vdpa_mgmt import FakeSimBlkMgmtdev, FakeSimNetMgmtdev
from dataplane.vdpa.mgmt import VdpaManagement
from dataplane.vdpa.mgmt.tool import VdpaTool


@pytest.fixture
def runtime(tmp_path_factory, monkeypatch):
    """A short runtime parent (unix socket paths are limited to 107 bytes)."""
    d = tmp_path_factory.mktemp("rt")
    monkeypatch.setenv("DATAPLANE_RUNTIME_DIR", str(d))
    return d


@pytest.fixture
def mgmt(runtime):
    """The service of the default prefix with vdpasim_net and vdpasim_blk, serving."""
    m = VdpaManagement()
    m.add_mgmtdev(FakeSimNetMgmtdev())
    m.add_mgmtdev(FakeSimBlkMgmtdev())
    m.start()
    assert os.path.exists(m.socket_path)
    yield m
    m.stop()
    assert not os.path.exists(m.socket_path), "the service left its socket behind"


def run_vdpa(*args):
    """Run the tool in-process: ``(rc, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    rc = VdpaTool(out, err).run(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def vdpa():
    return run_vdpa
