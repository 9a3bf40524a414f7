"""RSS steering on the mlx5 card (facts §3.7): RQT, TIR, the 7 flow classes of DPDK's mlx5 vDPA driver; the
switch picks the RX virtq by the TIR's symmetric Toeplitz hash, which a plain-Python reference computes
independently here over scapy-built headers."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dataplane.hwspec.mlx5_prm import (
    VDPA_RSS_KEY,
    EventMode,
    HashField,
    HashFn,
    L3Type,
    L4Type,
    Match,
    QState,
    RqType,
    Status,
    Syn,
    TirDisp,
)
from dataplane.nic.kernels import BURST, HDR_LEN, SLOT
from dataplane.nic.mlx5.steer import (R_SLOTS, rss_select, reference_queue, toeplitz)
from dataplane.testing.mlx5_cmd import Mlx5Vf
from dataplane.testing.nic_driver import NicQueue, net_frame

CARD_MODEL = "mlx5"
IP2 = HashField.SRC_IP | HashField.DST_IP
IP4 = IP2 | HashField.L4_SPORT | HashField.L4_DPORT
#: facts §3.7: (priority, ip_version, ip_protocol, fields, l3, l4)
CLASSES = [(7, 0, -1, 0, L3Type.IPV4, L4Type.TCP), (6, 4, -1, IP2, L3Type.IPV4, L4Type.TCP),
           (6, 6, -1, IP2, L3Type.IPV6, L4Type.TCP), (5, 4, 17, IP4, L3Type.IPV4, L4Type.UDP),
           (5, 4, 6, IP4, L3Type.IPV4, L4Type.TCP), (5, 6, 17, IP4, L3Type.IPV6, L4Type.UDP),
           (5, 6, 6, IP4, L3Type.IPV6, L4Type.TCP)]
REF_FLOWS = [(p, v, pr, f, True, l3, l4) for p, v, pr, f, l3, l4 in CLASSES]


def _flows(n, seed=7):
    """``n`` Ethernet frames of distinct flows: IPv4 / IPv6 x UDP / TCP, and a few others."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        sp, dp = rnd.randrange(1024, 65536), rnd.randrange(1, 65536)
        kind = i % 6
        if kind < 4:
            ip = (IP(src=f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
                     dst=f"192.168.{rnd.randrange(256)}.{rnd.randrange(1, 255)}") if kind < 2 else
                  IPv6(src=f"fd00::{rnd.randrange(1 << 16):x}:{rnd.randrange(1 << 16):x}",
                       dst=f"fd01::{rnd.randrange(1 << 16):x}"))
            l4 = UDP(sport=sp, dport=dp) if kind % 2 == 0 else TCP(sport=sp, dport=dp)
            pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ip / l4 / bytes([i % 256, 0x5A])
        elif kind == 4:
            pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / IP(src="10.0.0.1", dst=f"10.0.1.{i % 250 + 1}") / ICMP()
        else:
            pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01", type=0x88B5) / (bytes([i % 256]) * 46)
        out.append(bytes(pkt) + b"\0" * max(0, 60 - len(bytes(pkt))))
    return out


def _reverse(frame: bytes) -> bytes:
    pkt = Ether(frame)
    ip = pkt.payload
    ip.src, ip.dst = ip.dst, ip.src
    if isinstance(ip.payload, (TCP, UDP)):
        ip.payload.sport, ip.payload.dport = ip.payload.dport, ip.payload.sport
    return bytes(pkt)


def test_reference_toeplitz_is_the_classic_one():
    """The reference against the Microsoft RSS verification suite's first IPv4 vector."""
    key = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
    data = bytes([66, 9, 149, 187, 161, 142, 100, 80]) + (2794).to_bytes(2, "big") + (1766).to_bytes(2, "big")
    assert toeplitz(key, data) == 0x51CCC178
    assert toeplitz(key, data[:8]) == 0x323E8FC2


def _table(rqt_queues):
    n = len(CLASSES)
    order = sorted(range(n), key=lambda i: CLASSES[i][0])
    rules = np.zeros((n, R_SLOTS), np.int64)
    keys = np.zeros((n, 40), np.uint8)
    rqt = np.zeros((n, 512), np.int64)
    for j, i in enumerate(order):
        p, v, pr, f, l3, l4 = CLASSES[i]
        crit = (Match.IP_VERSION if v else 0) | (Match.IP_PROTOCOL if pr >= 0 else 0)
        rules[j] = (p, crit, v, pr, f, 1, l3, l4)
        keys[j] = np.frombuffer(VDPA_RSS_KEY, np.uint8)
        rqt[j, : len(rqt_queues)] = rqt_queues
    return rules, keys, rqt, np.full(n, len(rqt_queues), np.int64)


def test_kernel_matches_the_reference_and_is_symmetric():
    frames = _flows(240)
    frames += [_reverse(f) for f in frames if Ether(f).haslayer(IP) or Ether(f).haslayer(IPv6)]
    rqt_q = [0, 2, 4]
    rules, keys, rqt, rqt_len = _table(rqt_q)
    stage = np.zeros((BURST, SLOT), np.uint8)
    slen = np.zeros(BURST, np.int64)
    smask = np.zeros(BURST, np.int64)
    sel = np.zeros(BURST, np.int64)
    got = []
    for start in range(0, len(frames), BURST):
        chunk = frames[start : start + BURST]
        for i, f in enumerate(chunk):
            stage[i, :HDR_LEN] = 0
            stage[i, HDR_LEN : HDR_LEN + len(f)] = np.frombuffer(f, np.uint8)
            slen[i] = HDR_LEN + len(f)
            smask[i] = 0b10 if i % 5 else 0b11
        assert rss_select(stage, slen, smask, len(chunk), 2, rules, keys, rqt, rqt_len, len(CLASSES),
                          np.zeros(64, np.uint8), sel) == len(chunk)
        got += list(sel[: len(chunk)])
    want = [reference_queue(f, REF_FLOWS, key=VDPA_RSS_KEY, rqt=rqt_q) for f in frames]
    assert got == want
    assert set(got) == {0, 2, 4}  # the flows do spread
    n = len(frames) - len([f for f in frames[:240] if Ether(f).haslayer(IP) or Ether(f).haslayer(IPv6)])
    assert got[240:] == [g for f, g in zip(frames[:240], got[:240]) if Ether(f).haslayer(IP) or Ether(f).haslayer(IPv6)]
    assert n == 240
    # frames not bound for the function are marked so
    smask[:3] = 0b01
    rss_select(stage, slen, smask, 3, 2, rules, keys, rqt, rqt_len, len(CLASSES), np.zeros(64, np.uint8), sel)
    assert list(sel[:3]) == [-1, -1, -1]


# -- on the running card --------------------------------------------------------------------------------


class RssVf(Mlx5Vf):
    """Mlx5Vf with a second RX virtq (queue 2, queue pair 1)."""

    def __init__(self, vf_dir, **kw):
        super().__init__(vf_dir, num=256, rx_mode=EventMode.NO_MSIX, **kw)
        self.rx2 = NicQueue(self.drv, self.mem, 2, num=256)
        self.rx2q = self.drv.create_virtq(self.rx2)

    def ready(self):
        super().ready()
        assert self.drv.set_state(self.rx2q, QState.RDY).status == Status.OK


def _steer(v, rqs):
    fw, ok = v.drv.fw, v.drv.ok
    rqtn = ok(fw.create_rqt((rqs * (512 // len(rqs)))[:512], max_size=512)).fields["rqtn"]
    tirs = []
    for i, (p, ver, pr, f, l3, l4) in enumerate(CLASSES):
        t = ok(fw.create_tir(rqtn, key=VDPA_RSS_KEY, rx_hash_fn=HashFn.TOEPLITZ, rx_hash_symmetric=1,
                             selected_fields=f, l3_prot_type=l3, l4_prot_type=l4)).fields["tirn"]
        crit = (Match.IP_VERSION if ver else 0) | (Match.IP_PROTOCOL if pr >= 0 else 0)
        ok(fw.set_flow(i, t, priority=p, match_criteria=crit, ip_version=ver, ip_protocol=max(pr, 0)))
        tirs.append(t)
    return rqtn, tirs


def test_rss_spreads_flows_over_two_rx_virtqs(card, on_vf):
    a, b = on_vf(Mlx5Vf, 0, num=256), on_vf(RssVf, 1)
    a.ready()
    b.ready()
    _steer(b, [b.rxq, b.rx2q])
    frames = _flows(90)
    frames += [_reverse(f) for f in frames[:40] if Ether(f).haslayer(TCP) or Ether(f).haslayer(UDP)]
    want = [reference_queue(f, REF_FLOWS, key=VDPA_RSS_KEY, rqt=[0, 2]) for f in frames]
    for _ in range(len(frames)):
        b.rx.post_rx()
        b.rx2.post_rx()
    b.rx.kick(force=True)
    b.rx2.kick(force=True)
    for f in frames:
        a.tx.send(bytes(HDR_LEN) + f)
    a.tx.kick(force=True)
    assert len(a.tx.wait_used(len(frames))) == len(frames)
    n0, n2 = want.count(0), want.count(2)
    assert n0 and n2
    got0 = [b.rx.data(s, n)[HDR_LEN:] for s, n in b.rx.wait_used(n0)]
    got2 = [b.rx2.data(s, n)[HDR_LEN:] for s, n in b.rx2.wait_used(n2)]
    assert got0 == [f for f, q in zip(frames, want) if q == 0]
    assert got2 == [f for f, q in zip(frames, want) if q == 2]
    assert b.rx.harvest() == [] and b.rx2.harvest() == []
    # symmetric: a flow and its reverse share the queue
    rev = {f: _reverse(f) for f in frames[:40] if Ether(f).haslayer(TCP) or Ether(f).haslayer(UDP)}
    where = {f: q for f, q in zip(frames, want)}
    assert rev and all(where[f] == where[r] for f, r in rev.items())
    c0, c2 = b.drv.counters(b.rxq), b.drv.counters(b.rx2q)
    assert (c0["completed_desc"], c2["completed_desc"]) == (n0, n2)


def test_steering_commands_refuse_hostile_input(card, on_vf):
    v = on_vf(RssVf, 0)
    fw = v.drv.fw

    def refused(r, status, syn):
        assert (r.status, r.syndrome) == (status, syn), r

    refused(fw.create_rqt([v.rxq] * 513, max_size=1024), Status.BAD_PARAM, Syn.RQT_SIZE)  # over 1 << 9
    refused(fw.create_rqt([v.rxq], max_size=0), Status.BAD_PARAM, Syn.RQT_SIZE)
    refused(fw.create_rqt([v.rxq, v.rxq], max_size=1), Status.BAD_PARAM, Syn.RQT_SIZE)
    refused(fw.create_rqt([v.rxq], rq_type=RqType.RQ), Status.BAD_PARAM, Syn.RQ_TYPE)
    refused(fw.create_rqt([v.rxq, 999]), Status.BAD_RESOURCE, Syn.UNKNOWN_OBJECT)
    refused(fw.create_rqt([v.rxq], rqt_actual_size=2), Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT)
    rqtn = v.drv.ok(fw.create_rqt([v.rxq, v.rx2q], max_size=4)).fields["rqtn"]
    assert fw.query_rqt(rqtn).fields["rqs"] == [v.rxq, v.rx2q]
    refused(fw.modify_rqt(rqtn, [v.rxq] * 5, max_size=4), Status.BAD_PARAM, Syn.RQT_SIZE)
    refused(fw.modify_rqt(rqtn + 7, [v.rxq], max_size=4), Status.BAD_RESOURCE, Syn.UNKNOWN_RQT)
    v.drv.ok(fw.modify_rqt(rqtn, [v.rx2q], max_size=4))
    assert fw.query_rqt(rqtn).fields["rqs"] == [v.rx2q]
    refused(fw.create_tir(rqtn + 7, rx_hash_fn=HashFn.TOEPLITZ), Status.BAD_RESOURCE, Syn.UNKNOWN_RQT)
    refused(fw.create_tir(rqtn, disp_type=TirDisp.DIRECT), Status.BAD_PARAM, Syn.TIR_DISP)
    refused(fw.create_tir(rqtn, rx_hash_fn=HashFn.INVERTED_XOR8, selected_fields=IP2), Status.BAD_PARAM, Syn.HASH_FN)
    refused(fw.create_tir(rqtn, selected_fields=IP2), Status.BAD_PARAM, Syn.HASH_FN)  # fields with no hash
    refused(fw.create_tir(rqtn, rx_hash_fn=HashFn.TOEPLITZ, selected_fields=1 << 7), Status.BAD_PARAM,
            Syn.HASH_FIELDS)
    tirn = v.drv.ok(fw.create_tir(rqtn, rx_hash_fn=HashFn.TOEPLITZ, selected_fields=IP2)).fields["tirn"]
    refused(fw.set_flow(0, tirn + 7, priority=1), Status.BAD_RESOURCE, Syn.UNKNOWN_TIR)
    refused(fw.set_flow(0, tirn, priority=1, table_id=3), Status.BAD_PARAM, Syn.FLOW_TABLE)
    refused(fw.set_flow(0, tirn, priority=1, match_criteria=Match.IP_VERSION, ip_version=5), Status.BAD_PARAM,
            Syn.FLOW_MATCH)
    refused(fw.set_flow(0, tirn, priority=16), Status.BAD_PARAM, Syn.FIELD_TOO_WIDE)
    v.drv.ok(fw.set_flow(0, tirn, priority=1, match_criteria=Match.IP_VERSION, ip_version=4))
    # references: nothing in use goes away
    refused(fw.destroy_tir(tirn), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    refused(fw.destroy_rqt(rqtn), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    refused(fw.destroy_virtq(v.rx2q), Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    refused(fw.delete_flow(5), Status.BAD_RESOURCE, Syn.UNKNOWN_FLOW)
    v.drv.ok(fw.delete_flow(0))
    v.drv.ok(fw.destroy_tir(tirn))
    refused(fw.destroy_tir(tirn), Status.BAD_RESOURCE, Syn.UNKNOWN_TIR)
    v.drv.ok(fw.destroy_rqt(rqtn))
    v.drv.ok(fw.destroy_virtq(v.rx2q))
