"""DTS's testpmd options through the ``dataplane`` shell: --port-topology, --max-pkt-len, --mbuf-size."""

from __future__ import annotations

import os

import pytest

from dataplane.testing.testpmd import dataplane_shell

CPUS = sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(len(CPUS) < 2, reason="needs a worker lcore")
@pytest.mark.timeout(1200)  # a first start may compile the forwarding loop
@pytest.mark.parametrize("topology, tx_ports", [("paired", (1, 0)), ("loop", (0, 1))])
def test_dts_options_are_accepted_and_honoured(topology, tx_ports):
    eal = ["--vdev", "net_ring0", "--vdev", "net_ring1"]
    app = [f"--port-topology={topology}", "--max-pkt-len=9000", "--mbuf-size=2048,4096"]
    with dataplane_shell(eal, app, lcores=f"{CPUS[0]}-{CPUS[1]}", timeout=900) as tp:
        text = tp.cmd("show config fwd")
        assert f"ports=2 - cores=1 - streams=2 - port topology={topology}" in text, text
        for rx, tx in enumerate(tx_ports):
            assert f"RX P={rx}/Q=0 (socket 0) -> TX P={tx}/Q=0 (socket 0)" in text, text
        assert "Bad arguments" not in tp.output
