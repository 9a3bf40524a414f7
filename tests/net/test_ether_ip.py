"""Python helpers of dataplane.net: MAC and IPv4 address conversions."""

from __future__ import annotations

import pytest

from dataplane.net.ether import int_to_mac, mac_to_int
from dataplane.net.ip import ipv4


def test_mac_and_ip_helpers():
    assert mac_to_int("52:54:00:12:34:56") == 0x525400123456
    assert mac_to_int(bytes.fromhex("525400123456")) == 0x525400123456
    assert int_to_mac(0x525400123456) == "52:54:00:12:34:56"
    assert ipv4(198, 18, 0, 1) == 0xC6120001
    with pytest.raises(ValueError):
        mac_to_int("52:54:00")
