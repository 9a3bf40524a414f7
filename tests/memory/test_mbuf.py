"""The mbuf layout (a cross-process ABI) and DPDK's flag values."""

from __future__ import annotations

import numpy as np

from dataplane.memory import mbuf as mb

# name: (offset, dtype) -- changing any of these breaks every process that
# maps a pool created by another build; bump the mempool version then.
EXPECTED_LAYOUT = {
    "buf_iova": (0, np.uint64),
    "buf_off": (8, np.uint64),
    "data_off": (16, np.uint16),
    "refcnt": (18, np.uint16),
    "nb_segs": (20, np.uint16),
    "port": (22, np.uint16),
    "ol_flags": (24, np.uint64),
    "packet_type": (32, np.uint32),
    "pkt_len": (36, np.uint32),
    "data_len": (40, np.uint16),
    "vlan_tci": (42, np.uint16),
    "hash": (44, np.uint32),
    "hash_hi": (48, np.uint32),
    "vlan_tci_outer": (52, np.uint16),
    "buf_len": (54, np.uint16),
    "next": (56, np.uint32),
    "index": (60, np.uint32),
    "pool_id": (64, np.uint16),
    "priv_size": (66, np.uint16),
    "l2_len": (68, np.uint16),
    "l3_len": (70, np.uint16),
    "l4_len": (72, np.uint16),
    "tso_segsz": (74, np.uint16),
    "outer_l2_len": (76, np.uint16),
    "outer_l3_len": (78, np.uint16),
    "timesync": (80, np.uint16),
    "rsvd": (82, np.uint16),
    "seqn": (84, np.uint32),
    "udata64": (88, np.uint64),
}


def test_mbuf_is_two_cache_lines():
    assert mb.MBUF_SIZE == 128
    assert mb.MBUF_DTYPE.itemsize == 128
    assert mb.MBUF_DTYPE.isalignedstruct


def test_field_offsets_are_stable():
    fields = mb.MBUF_DTYPE.fields
    for name, (off, dt) in EXPECTED_LAYOUT.items():
        assert fields[name][1] == off, name
        assert fields[name][0] == np.dtype(dt), name
    dyn_dt, dyn_off = fields["dynfield"][:2]
    assert dyn_off == 96 and dyn_dt.shape == (mb.MBUF_DYNFIELD_WORDS,) and dyn_dt.base == np.uint32
    assert dyn_off + dyn_dt.itemsize == 128
    assert set(fields) == set(EXPECTED_LAYOUT) | {"dynfield"}
    assert mb.MBUF_FIELD_OFFSETS == {n: fields[n][1] for n in fields}


def test_fields_do_not_overlap_and_are_naturally_aligned():
    spans = sorted((off, off + dt.itemsize, name) for name, (dt, off) in mb.MBUF_DTYPE.fields.items())
    for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
        assert e0 <= s1, f"{n0} overlaps {n1}"
    for name, (dt, off) in mb.MBUF_DTYPE.fields.items():
        assert off % dt.base.itemsize == 0, name


def test_rx_fields_in_first_cache_line_tx_in_second():
    offs = mb.MBUF_FIELD_OFFSETS
    for name in ("buf_iova", "buf_off", "data_off", "refcnt", "nb_segs", "port", "ol_flags",
                 "packet_type", "pkt_len", "data_len", "vlan_tci", "hash", "buf_len", "next"):
        assert offs[name] < 64, name
    for name in ("l2_len", "l3_len", "l4_len", "tso_segsz", "outer_l2_len", "outer_l3_len"):
        assert 64 <= offs[name] < 128, name


def test_refcnt_u16_word():
    a = np.zeros(3, mb.MBUF_DTYPE)
    a[1]["refcnt"] = 0xBEEF
    u16 = a.view(np.uint16)
    assert u16[1 * mb.MBUF_U16_WORDS + mb.MBUF_REFCNT_U16] == 0xBEEF


def test_sizes_and_sentinels():
    assert mb.RTE_PKTMBUF_HEADROOM == 128
    assert mb.RTE_MBUF_DEFAULT_DATAROOM == 2048
    assert mb.RTE_MBUF_DEFAULT_BUF_SIZE == 2176
    assert mb.MBUF_NEXT_NONE == 0xFFFFFFFF
    assert mb.MBUF_PORT_INVALID == 0xFFFF


def test_ol_flag_values_are_dpdks():
    expect = {
        "RTE_MBUF_F_RX_VLAN": 1 << 0,
        "RTE_MBUF_F_RX_RSS_HASH": 1 << 1,
        "RTE_MBUF_F_RX_FDIR": 1 << 2,
        "RTE_MBUF_F_RX_L4_CKSUM_BAD": 1 << 3,
        "RTE_MBUF_F_RX_IP_CKSUM_BAD": 1 << 4,
        "RTE_MBUF_F_RX_OUTER_IP_CKSUM_BAD": 1 << 5,
        "RTE_MBUF_F_RX_VLAN_STRIPPED": 1 << 6,
        "RTE_MBUF_F_RX_IP_CKSUM_GOOD": 1 << 7,
        "RTE_MBUF_F_RX_L4_CKSUM_GOOD": 1 << 8,
        "RTE_MBUF_F_RX_IEEE1588_PTP": 1 << 9,
        "RTE_MBUF_F_RX_IEEE1588_TMST": 1 << 10,
        "RTE_MBUF_F_RX_FDIR_ID": 1 << 13,
        "RTE_MBUF_F_RX_FDIR_FLX": 1 << 14,
        "RTE_MBUF_F_RX_QINQ_STRIPPED": 1 << 15,
        "RTE_MBUF_F_RX_LRO": 1 << 16,
        "RTE_MBUF_F_RX_QINQ": 1 << 20,
        "RTE_MBUF_F_RX_IP_CKSUM_NONE": (1 << 4) | (1 << 7),
        "RTE_MBUF_F_RX_L4_CKSUM_NONE": (1 << 3) | (1 << 8),
        "RTE_MBUF_F_RX_OUTER_L4_CKSUM_BAD": 1 << 21,
        "RTE_MBUF_F_RX_OUTER_L4_CKSUM_GOOD": 1 << 22,
        "RTE_MBUF_F_TX_OUTER_UDP_CKSUM": 1 << 41,
        "RTE_MBUF_F_TX_UDP_SEG": 1 << 42,
        "RTE_MBUF_F_TX_TUNNEL_VXLAN": 1 << 45,
        "RTE_MBUF_F_TX_TUNNEL_GENEVE": 4 << 45,
        "RTE_MBUF_F_TX_TUNNEL_MASK": 0xF << 45,
        "RTE_MBUF_F_TX_QINQ": 1 << 49,
        "RTE_MBUF_F_TX_TCP_SEG": 1 << 50,
        "RTE_MBUF_F_TX_IEEE1588_TMST": 1 << 51,
        "RTE_MBUF_F_TX_TCP_CKSUM": 1 << 52,
        "RTE_MBUF_F_TX_SCTP_CKSUM": 2 << 52,
        "RTE_MBUF_F_TX_UDP_CKSUM": 3 << 52,
        "RTE_MBUF_F_TX_L4_MASK": 3 << 52,
        "RTE_MBUF_F_TX_IP_CKSUM": 1 << 54,
        "RTE_MBUF_F_TX_IPV4": 1 << 55,
        "RTE_MBUF_F_TX_IPV6": 1 << 56,
        "RTE_MBUF_F_TX_VLAN": 1 << 57,
        "RTE_MBUF_F_TX_OUTER_IP_CKSUM": 1 << 58,
        "RTE_MBUF_F_TX_OUTER_IPV4": 1 << 59,
        "RTE_MBUF_F_TX_OUTER_IPV6": 1 << 60,
        "RTE_MBUF_F_EXTERNAL": 1 << 61,
        "RTE_MBUF_F_INDIRECT": 1 << 62,
    }
    for name, value in expect.items():
        assert getattr(mb, name) == value, name


def test_rx_and_tx_flags_live_in_their_ranges():
    rx = [v for k, v in vars(mb).items() if k.startswith("RTE_MBUF_F_RX_")]
    tx = [v for k, v in vars(mb).items() if k.startswith("RTE_MBUF_F_TX_")]
    assert all(v < mb.RTE_MBUF_F_FIRST_FREE for v in rx)
    assert all(v == 0 or v > mb.RTE_MBUF_F_LAST_FREE for v in tx)
    assert mb.RTE_MBUF_F_TX_OFFLOAD_MASK & ((1 << 41) - 1) == 0
    assert mb.RTE_MBUF_F_TX_OFFLOAD_MASK & (mb.RTE_MBUF_F_EXTERNAL | mb.RTE_MBUF_F_INDIRECT) == 0


def test_packet_types():
    assert mb.RTE_PTYPE_L2_ETHER == 0x1
    assert mb.RTE_PTYPE_L3_IPV4 == 0x10 and mb.RTE_PTYPE_L3_IPV6 == 0x40
    assert mb.RTE_PTYPE_L4_TCP == 0x100 and mb.RTE_PTYPE_L4_UDP == 0x200
    assert mb.ptype_str(mb.RTE_PTYPE_L2_ETHER | mb.RTE_PTYPE_L3_IPV4 | mb.RTE_PTYPE_L4_UDP) == "L2_ETHER L3_IPV4 L4_UDP"
    assert mb.ptype_str(0) == "UNKNOWN"
    assert mb.ptype_str(mb.RTE_PTYPE_TUNNEL_VXLAN | mb.RTE_PTYPE_INNER_L4_TCP) == "TUNNEL_VXLAN INNER_L4_TCP"


def test_flag_names():
    s = mb.ol_flags_str(
        mb.RTE_MBUF_F_RX_IP_CKSUM_GOOD | mb.RTE_MBUF_F_RX_L4_CKSUM_NONE | mb.RTE_MBUF_F_RX_VLAN
    )
    assert s.split() == ["RTE_MBUF_F_RX_IP_CKSUM_GOOD", "RTE_MBUF_F_RX_L4_CKSUM_NONE", "RTE_MBUF_F_RX_VLAN"]
    s = mb.ol_flags_str(mb.RTE_MBUF_F_TX_UDP_CKSUM | mb.RTE_MBUF_F_TX_IPV4 | mb.RTE_MBUF_F_TX_TCP_SEG)
    assert set(s.split()) == {"RTE_MBUF_F_TX_UDP_CKSUM", "RTE_MBUF_F_TX_IPV4", "RTE_MBUF_F_TX_TCP_SEG"}
    assert mb.ol_flags_str(0) == ""
