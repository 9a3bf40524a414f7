"""RSS steering on the mlx5 card: flow rules -> TIR -> RQT -> the RX virtq a frame goes to (facts §3.7).

:func:`steering_table` turns a function's flow rules, TIRs and RQTs (:mod:`~dataplane.nic.mlx5.objects`)
into arrays; :func:`rss_select` (numba, on the switch's hot path) picks, for every staged frame bound
for the function, the queue index of its RX virtq:

1. the frame's outer headers are read (after the virtio-net header): ip_version 4 or 6 (EtherType
   0x0800 / 0x86DD), ip_protocol, the addresses, and the L4 ports of a TCP or UDP header (an IPv4
   fragment other than the first has no ports; IPv6 extension headers are not walked);
2. the rule with the lowest ``priority`` value whose criteria all match wins (equal priorities: the
   lowest flow_index); no rule: RX virtq 0;
3. its TIR hashes, with Toeplitz over its 40-byte key, the selected fields in the order SRC_IP,
   DST_IP, L4_SPORT, L4_DPORT -- the addresses only when the frame's IP version is the TIR's l3
   type, the ports only when its protocol is the TIR's l4 type.  **Symmetric** (ConnectX's "OR-XOR"
   input, as the vDPA driver's reference :mod:`dataplane.vdpa.mlx5.rss` has it): a pair of source
   and destination fields is hashed as (src | dst, src ^ dst), so (a -> b) and (b -> a) hash the
   same;
4. the RQT entry ``hash % rqt_actual_size`` names the virtq.  No fields selected: hash 0, the
   first entry.

:func:`toeplitz` and :func:`reference_queue` are the same in plain Python, for tests.
"""

from __future__ import annotations

import numpy as np

from dataplane.hwspec.mlx5_prm import HashField, L3Type, L4Type, Match
from dataplane.rings.jit import kernel

from ..kernels import HDR_LEN

__all__ = ["steering_table", "rss_select", "warm_up_steer", "toeplitz", "frame_fields", "reference_queue", "SteerTable",
           "R_PRIO", "R_CRIT", "R_IPV", "R_PROTO", "R_FIELDS", "R_SYM", "R_L3", "R_L4", "R_SLOTS", "MAX_RQT"]

R_PRIO, R_CRIT, R_IPV, R_PROTO, R_FIELDS, R_SYM, R_L3, R_L4 = range(8)
R_SLOTS = 8
MAX_RQT = 512
_TCP, _UDP = 6, 17
_L4 = (_TCP, _UDP)  # by L4Type
# the numbers, as globals the kernels can read
_M_IPV, _M_PROTO = Match.IP_VERSION, Match.IP_PROTOCOL
_F_SRC, _F_DST, _F_SPORT, _F_DPORT = HashField.SRC_IP, HashField.DST_IP, HashField.L4_SPORT, HashField.L4_DPORT
_L3_V4, _L4_TCP = L3Type.IPV4, L4Type.TCP


class SteerTable:
    """The arrays :func:`rss_select` reads: ``rules`` int64[n, R_SLOTS] (by precedence), ``keys``
    uint8[n, 40], ``rqt`` int64[n, MAX_RQT] (queue indices), ``rqt_len`` int64[n]."""

    __slots__ = ("rules", "keys", "rqt", "rqt_len", "n")

    def __init__(self, n: int):
        self.n = n
        self.rules = np.zeros((max(n, 1), R_SLOTS), np.int64)
        self.keys = np.zeros((max(n, 1), 40), np.uint8)
        self.rqt = np.zeros((max(n, 1), MAX_RQT), np.int64)
        self.rqt_len = np.ones(max(n, 1), np.int64)


def steering_table(hca) -> SteerTable | None:
    """The steering of ``hca`` (an :class:`~dataplane.nic.mlx5.objects.Hca`) as arrays; None without rules.
    RQT entries name virtq objects; the table holds their queue indices (an object gone since: -1)."""
    flows = sorted(hca.flows.values(), key=lambda f: (f.priority, f.flow_index))
    if not flows:
        return None
    t = SteerTable(len(flows))
    for i, f in enumerate(flows):
        tir = hca.tirs[f.tirn]
        rqt = hca.rqts[tir.rqtn]
        t.rules[i] = (f.priority, f.criteria, f.ip_version, f.ip_protocol, tir.fields, int(tir.symmetric), tir.l3,
                      tir.l4)
        t.keys[i] = np.frombuffer(tir.key, np.uint8)
        qs = [hca.virtqs[o].attrs["queue_index"] if o in hca.virtqs else -1 for o in rqt.rqs[:MAX_RQT]]
        t.rqt[i, : len(qs)] = qs
        t.rqt_len[i] = len(qs)
    return t


@kernel
def _hash(key, buf, n):
    """Toeplitz of ``buf[:n]`` over ``key`` (40 bytes: n <= 36)."""
    h = np.uint32(0)
    v = np.uint32((np.uint32(key[0]) << 24) | (np.uint32(key[1]) << 16) | (np.uint32(key[2]) << 8) | np.uint32(key[3]))
    for i in range(n):
        b = buf[i]
        nxt = key[i + 4] if i + 4 < 40 else np.uint8(0)
        for k in range(8):
            if (b >> (7 - k)) & 1:
                h ^= v
            v = np.uint32((v << np.uint32(1)) | np.uint32((nxt >> (7 - k)) & 1))
    return h


@kernel
def _put_pair(tmp, pos, row, a, b, ln, both, sym):
    """Append the fields at row[a:a+ln] and row[b:b+ln] (``both``: 1 a only, 2 b only, 3 both); when
    ``sym`` and both, the symmetric OR-XOR input instead: (a | b, a ^ b)."""
    if sym and both == 3:
        for k in range(ln):
            tmp[pos + k] = row[a + k] | row[b + k]
            tmp[pos + ln + k] = row[a + k] ^ row[b + k]
        return pos + 2 * ln
    if both & 1:
        for k in range(ln):
            tmp[pos + k] = row[a + k]
        pos += ln
    if both & 2:
        for k in range(ln):
            tmp[pos + k] = row[b + k]
        pos += ln
    return pos


@kernel
def rss_select(stage, slen, smask, n, bit, rules, keys, rqt, rqt_len, nrules, tmp, sel):
    """``sel[i]`` = the RX virtq queue index for staged frame ``i`` (-1: not bound for ``bit``);
    ``tmp``: uint8[64] scratch.  Returns the frames bound for ``bit``."""
    e0 = HDR_LEN
    cnt = 0
    for i in range(n):
        if smask[i] & bit == 0:
            sel[i] = -1
            continue
        cnt += 1
        row = stage[i]
        ln = slen[i]
        et = (np.int64(row[e0 + 12]) << 8) | row[e0 + 13]
        ipv = 0
        proto = -1
        ip = e0 + 14
        src = dst = alen = l4 = 0
        if et == 0x0800 and ln >= ip + 20:
            ipv = 4
            proto = np.int64(row[ip + 9])
            ihl = np.int64(row[ip] & 15) * 4
            frag = ((np.int64(row[ip + 6]) & 0x1F) << 8) | row[ip + 7]
            src, dst, alen = ip + 12, ip + 16, 4
            if frag == 0 and ihl >= 20 and ln >= ip + ihl + 4:
                l4 = ip + ihl
        elif et == 0x86DD and ln >= ip + 40:
            ipv = 6
            proto = np.int64(row[ip + 6])
            src, dst, alen = ip + 8, ip + 24, 16
            if ln >= ip + 44:
                l4 = ip + 40
        q = 0
        for r in range(nrules):
            crit = rules[r, R_CRIT]
            if crit & _M_IPV and rules[r, R_IPV] != ipv:
                continue
            if crit & _M_PROTO and rules[r, R_PROTO] != proto:
                continue
            fields = rules[r, R_FIELDS]
            sym = rules[r, R_SYM] != 0
            pos = 0
            want_v = 4 if rules[r, R_L3] == _L3_V4 else 6
            if ipv == want_v:
                pos = _put_pair(tmp, pos, row, src, dst, alen,
                                (1 if fields & _F_SRC else 0) | (2 if fields & _F_DST else 0), sym)
            want_p = _TCP if rules[r, R_L4] == _L4_TCP else _UDP
            if l4 and proto == want_p:
                pos = _put_pair(tmp, pos, row, l4, l4 + 2, 2,
                                (1 if fields & _F_SPORT else 0) | (2 if fields & _F_DPORT else 0),
                                sym)
            h = _hash(keys[r], tmp, pos) if pos else np.uint32(0)
            q = rqt[r, np.int64(h) % rqt_len[r]]
            break
        sel[i] = q
    return cnt


def warm_up_steer() -> None:
    """Compile (or load from the cache) :func:`rss_select` in this process, before frames wait on it."""
    from ..kernels import BURST, SLOT

    t = SteerTable(1)
    z = np.zeros(BURST, np.int64)
    rss_select(np.zeros((BURST, SLOT), np.uint8), z, z, 0, 1, t.rules, t.keys, t.rqt, t.rqt_len, 1,
               np.zeros(64, np.uint8), np.zeros(BURST, np.int64))


# -- plain Python: the reference, for tests ------------------------------------------------------

def toeplitz(key: bytes, data: bytes) -> int:
    """The Toeplitz hash of ``data`` with ``key`` (the classic definition, bit by bit)."""
    kbits = int.from_bytes(key, "big")
    klen = 8 * len(key)
    h = 0
    for i in range(8 * len(data)):
        if data[i // 8] >> (7 - i % 8) & 1:
            h ^= (kbits >> (klen - 32 - i)) & 0xFFFFFFFF
    return h


def frame_fields(frame: bytes) -> tuple[int, int, bytes, bytes, bytes, bytes]:
    """(ip_version, ip_protocol, src, dst, sport, dport) of an Ethernet frame (0, -1, b"".. when absent)."""
    et = int.from_bytes(frame[12:14], "big")
    p = frame[14:]
    if et == 0x0800 and len(p) >= 20:
        ihl = (p[0] & 15) * 4
        frag = int.from_bytes(p[6:8], "big") & 0x1FFF
        l4 = p[ihl:] if frag == 0 and len(p) >= ihl + 4 else b""
        return 4, p[9], p[12:16], p[16:20], l4[0:2], l4[2:4]
    if et == 0x86DD and len(p) >= 40:
        l4 = p[40:] if len(p) >= 44 else b""
        return 6, p[6], p[8:24], p[24:40], l4[0:2], l4[2:4]
    return 0, -1, b"", b"", b"", b""


def _or_xor(pair) -> bytes:
    a, b = pair
    return bytes(x | y for x, y in zip(a, b)) + bytes(x ^ y for x, y in zip(a, b))


def reference_queue(frame: bytes, flows, *, key: bytes, rqt: list[int]) -> int:
    """The RX queue of ``frame`` (Ethernet, no virtio header) by ``flows``: (priority, ip_version | 0,
    ip_protocol | -1, fields, symmetric, l3, l4) tuples, all on one RQT of queue indices ``rqt``."""
    ipv, proto, src, dst, sp, dp = frame_fields(frame)
    for prio, want_v, want_p, fields, sym, l3, l4 in sorted(flows, key=lambda f: f[0]):
        if want_v and want_v != ipv or want_p >= 0 and want_p != proto:
            continue
        data = b""
        if ipv == (4 if l3 == L3Type.IPV4 else 6):
            pair = [f for f, m in ((src, HashField.SRC_IP), (dst, HashField.DST_IP)) if fields & m]
            data += _or_xor(pair) if sym and len(pair) == 2 else b"".join(pair)
        if sp and proto == _L4[l4]:
            pair = [f for f, m in ((sp, HashField.L4_SPORT), (dp, HashField.L4_DPORT)) if fields & m]
            data += _or_xor(pair) if sym and len(pair) == 2 else b"".join(pair)
        return rqt[toeplitz(key, data) % len(rqt)] if data else rqt[0]
    return 0
