"""The driver registry and the port interface: every kind registers once, and the config reads the registry."""

from __future__ import annotations

import os

import pytest

from dataplane import config
from dataplane.config import load_config
from dataplane.ethdev import EthdevError, registry
from dataplane.ethdev.port import LcorePort, Port, PortEnv
from dataplane.ethdev.queue import KIND_NONE
from dataplane.ethdev.ring import RingPort


def test_the_built_in_kinds_are_registered_and_the_config_reads_them():
    assert registry.port_kinds() == ("net_vhost", "net_virtio_user", "net_ring")
    assert config.PORT_KINDS == registry.port_kinds()
    tags = set()
    for d in registry.drivers():
        assert issubclass(d.port_class, Port) and issubclass(d.lcore_port, LcorePort), d
        assert d.queue_kind != KIND_NONE
        tags.add(d.queue_kind)
    assert len(tags) == len(registry.drivers())  # one PortQueue kind tag per driver
    assert registry.find_driver("net_virtio_user3").prefix == "net_virtio_user"


def test_an_unknown_device_is_refused_with_the_known_kinds():
    with pytest.raises(EthdevError, match=r"net_tap0: unknown device \(known: net_vhostN, net_virtio_userN, net_ringN\)"):
        registry.find_driver("net_tap0")


class _NullPort(RingPort):
    """A test kind: a ring port under another name."""


def test_one_registration_adds_a_kind(monkeypatch):
    monkeypatch.setattr(registry, "_DRIVERS", dict(registry._DRIVERS))
    with pytest.raises(ValueError, match="unknown port 'net_null0'"):
        load_config('[[port]]\nvdev = "net_null0"\n')
    ring = registry.find_driver("net_ring0")
    registry.register(registry.Driver("net_null", _NullPort, 99, ring.lcore_port))
    assert registry.port_kinds()[-1] == "net_null"
    assert registry.find_driver("net_null0").port_class is _NullPort
    cfg = load_config('[[port]]\nvdev = "net_null0"\n')
    assert [p.vdev.name for p in cfg.port] == ["net_null0"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Driver("net_null", RingPort, 99, ring.lcore_port))
    with pytest.raises(TypeError, match="is not a Port"):
        registry.register(registry.Driver("net_bad", object, 98, ring.lcore_port))


def test_probe_builds_the_port_and_configure_refuses_more_queues_than_it_has():
    from dataplane.memory import Memory
    from dataplane.memory.units import MiB

    with Memory(16 * MiB, huge=False, file_prefix=f"reg{os.getpid()}") as mem:
        port = registry.probe("net_ring0,queues=2", 0, PortEnv(memory=mem))
        try:
            assert isinstance(port, RingPort) and port.nb_rx_queues == port.nb_tx_queues == 2
            assert not port.listening and port.link_up
            port.configure(2, 1)
            with pytest.raises(EthdevError, match=r"net_ring0: queues=2 but --rxq/--txq ask for 3"):
                port.configure(1, 3)
        finally:
            port.close()
        assert mem.memzones() == []


def test_bind_cables_ring_peers_and_refuses_a_peer_that_is_not_a_ring_port():
    from dataplane.memory import Memory
    from dataplane.memory.units import MiB

    with Memory(16 * MiB, huge=False, file_prefix=f"bnd{os.getpid()}") as mem:
        env = PortEnv(memory=mem)
        ports = [registry.probe(d, i, env) for i, d in enumerate(["net_ring0", "net_ring1,peer=net_ring0", "net_ring2,peer=net_tap0"])]
        try:
            by_name = {p.name: p for p in ports}
            ports[1].bind(by_name)
            assert ports[0].peer == "net_ring1" and ports[1].peer == "net_ring0"  # named back implicitly
            assert ports[0].lcore_info() == dict(name="net_ring0", port_id=0, peer="net_ring1")
            with pytest.raises(EthdevError, match="net_ring2: peer 'net_tap0' is not a net_ring port"):
                ports[2].bind(by_name)
        finally:
            for p in ports:
                p.close()

