"""The ``net_vhost`` port's devargs -> what its socket offers, and the devargs it refuses.

The port registers its socket with the net device's offer for its flags
(:meth:`VhostPortArgs.offered_features`): the host TSO offloads (HOST_TSO4,
HOST_TSO6 and HOST_ECN with them) only with ``tso=1``, PAGEFAULT only with
``postcopy-support=1``.  A front-end reads exactly that with GET_FEATURES /
GET_PROTOCOL_FEATURES.  What cannot be offered is refused at parse time with
the bits named: ``tso=1`` with ``linear-buffer=1`` but not ``ext-buffer=1``,
``iommu-support=1``, and any devarg that is not the vhost PMD's.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from dataplane.ethdev import EthdevError
from dataplane.ethdev.vhost import VhostPort, VhostPortArgs
from dataplane.lcores.eal import eal_init
from dataplane.testing.vhost_frontend import VhostUserFrontend
from dataplane.vhost.library import VhostLibrary, default_protocol_features
from dataplane.vhost.net import HOST_TSO_FEATURES, NET_FEATURES, NetDevice
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VirtioFeature as VF, bit

PAGEFAULT = bit(PF.VHOST_USER_PROTOCOL_F_PAGEFAULT)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A socket directory, a private vhost library and an EAL with only the main lcore (the
    ports' control blocks live in its memory; no queue is ever polled here)."""
    monkeypatch.setenv("DATAPLANE_RUNTIME_DIR", str(tmp_path / "run"))
    d = tempfile.mkdtemp(prefix="vpo")
    lib = VhostLibrary()
    cpu = str(min(os.sched_getaffinity(0)))
    try:
        with eal_init(["-l", cpu, "--no-huge", "-m", "16", "--file-prefix", f"vpo{os.getpid()}"],
                      handle_signals=False):
            yield d, lib
    finally:
        lib.close()
        shutil.rmtree(d, ignore_errors=True)


def _wire_offer(env, devargs: str) -> tuple[int, int]:
    """Start a port with ``devargs`` (iface in the test directory); what a front-end reads on its socket."""
    d, lib = env
    sock = os.path.join(d, "p.sock")
    with VhostPort(f"net_vhost0,iface={sock}{devargs}", library=lib) as port:
        port.start()
        assert lib.driver_get_features(sock) == port.args.offered_features()
        fe = VhostUserFrontend.connect(sock, timeout=5.0)
        try:
            return fe.get_features(), fe.get_protocol_features()
        finally:
            fe.close()


@pytest.mark.parametrize("devargs,withdrawn,pagefault", [
    ("", HOST_TSO_FEATURES, False),
    (",tso=1", 0, False),
    (",tso=1,linear-buffer=1,ext-buffer=1", 0, False),
    (",linear-buffer=1", HOST_TSO_FEATURES, False),
    (",queues=2,client=0,postcopy-support=1", HOST_TSO_FEATURES, True),
    (",legacy-ol-flags=1", HOST_TSO_FEATURES, False),
], ids=["default", "tso", "tso-ext-buffer", "linear-buffer", "postcopy", "legacy-ol-flags"])
def test_devargs_decide_the_offer_on_the_wire(env, devargs, withdrawn, pagefault):
    features, protocol = _wire_offer(env, devargs)
    assert features == NET_FEATURES & ~withdrawn
    for f in (VF.VIRTIO_NET_F_HOST_TSO4, VF.VIRTIO_NET_F_HOST_TSO6, VF.VIRTIO_NET_F_HOST_ECN):
        assert bool(features & bit(f)) == (not withdrawn), f.name
    for f in (VF.VIRTIO_NET_F_CTRL_VQ, VF.VIRTIO_NET_F_CTRL_RX, VF.VIRTIO_NET_F_GSO, VF.VIRTIO_NET_F_HOST_UFO,
              VF.VIRTIO_NET_F_GUEST_UFO, VF.VIRTIO_F_ACCESS_PLATFORM):
        assert not features & bit(f), f.name
    assert bool(protocol & PAGEFAULT) == pagefault
    flags = VhostPortArgs(f"net_vhost0,iface=/tmp/x{devargs}").flags()
    assert protocol == default_protocol_features(NetDevice(), flags)
    assert not protocol & bit(PF.VHOST_USER_PROTOCOL_F_CONFIG)  # net: on request only (QEMU warns otherwise)


@pytest.mark.parametrize("devargs,error", [
    (",tso=1,linear-buffer=1",
     "tso=1 cannot be offered with linear-buffer=1 unless ext-buffer=1: "
     "VIRTIO_NET_F_HOST_TSO4|VIRTIO_NET_F_HOST_TSO6|VIRTIO_NET_F_HOST_ECN"),
    (",ctrl-vq=1", "unknown devarg\\(s\\) ctrl-vq"),
    (",tso=2", "tso='2' must be 0 or 1"),
    (",legacy-ol-flags=0", "legacy-ol-flags=0 \\(compliant Rx offload flags\\) is not implemented"),
    (",legacy-ol-flags=yes", "legacy-ol-flags='yes' must be 0 or 1"),
    (",dequeue-zero-copy=1", "unknown devarg\\(s\\) dequeue-zero-copy"),  # removed in DPDK 20.11
], ids=["tso-linear-buffer", "unknown", "bad-value", "compliant-ol-flags", "bad-legacy", "dequeue-zero-copy"])
def test_devargs_that_cannot_be_offered_are_refused(devargs, error):
    with pytest.raises(EthdevError, match=error):
        VhostPortArgs(f"net_vhost0,iface=/tmp/x.sock{devargs}")


def test_iommu_support_is_refused_when_the_port_starts(env):
    d, lib = env
    with VhostPort(f"net_vhost0,iface={os.path.join(d, 'p.sock')},iommu-support=1", library=lib) as port:
        with pytest.raises(EthdevError, match="IOMMU_SUPPORT: IOTLB / ACCESS_PLATFORM is not implemented"):
            port.start()
