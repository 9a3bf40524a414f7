"""mlx5 card mkeys: direct, KLM and KLM_FBS over guest memory with holes, 2 GiB splits, and the
translation the ring kernels take (facts §3.3)."""

import ctypes
import mmap

import numpy as np
import pytest

from dataplane.hwspec.mlx5_prm import MAX_KLM_BYTE_COUNT, AccessMode, Status, Syn
from dataplane.rings.regions import translate as ring_translate

GIB = 1 << 30
MIB = 1 << 20
# a guest like QEMU's: low memory, a hole, high memory (IOVA = GPA, one DMA mapping per region)
LOW, LOW_LEN = 0x0, 2 * MIB
HIGH, HIGH_LEN = 4 * MIB, 4 * MIB


@pytest.fixture
def guest(mlx5):
    """Two guest regions DMA-mapped at their GPAs, a pd, a direct mkey per region, the null mkey."""
    fds = {LOW: mlx5.map_memory(LOW, LOW_LEN), HIGH: mlx5.map_memory(HIGH, HIGH_LEN)}
    fw = mlx5.fw
    pd = fw.alloc_pd().fields["pd"]
    mr = {}
    for gpa, size in ((LOW, LOW_LEN), (HIGH, HIGH_LEN)):
        r = fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=gpa, len=size, mtt_iova=gpa, local_write=1)
        assert r.status == Status.OK, r
        mr[gpa] = r.fields["mkey"]
    return dict(pd=pd, mr=mr, null=fw.null_mkey(), fds=fds)


def _poke(fd: int, off: int, data: bytes) -> None:
    m = mmap.mmap(fd, off + len(data) + (-(off + len(data)) % mmap.PAGESIZE))
    m[off : off + len(data)] = data
    m.close()


def _klm_guest(g):
    """KLM entries for [0, HIGH + HIGH_LEN): low region, hole (null mkey), high region."""
    return [(LOW_LEN, g["mr"][LOW], LOW), (HIGH - LOW_LEN, g["null"], 0), (HIGH_LEN, g["mr"][HIGH], HIGH)]


def test_direct_mkey_translates_into_its_dma_mapping(mlx5, guest):
    store = mlx5.hca.mkeys
    k = guest["mr"][HIGH]
    assert store.translate(k, HIGH + 0x1000, 64) == (HIGH, 0x1000)
    assert store.translate(k, HIGH + HIGH_LEN - 64, 64) == (HIGH, HIGH_LEN - 64)
    assert store.translate(k, HIGH + HIGH_LEN - 64, 65) is None  # runs off the end
    assert store.translate(k, HIGH - 1, 2) is None
    assert store.translate(k, LOW, 16) is None  # another mkey's memory
    # the region table is what the ring kernels read, and it reaches the same bytes
    _poke(guest["fds"][HIGH], 0x1000, b"mlx5 direct")
    t = store.regions(k)
    assert t.shape == (1, 3) and t[0, 0] == HIGH and t[0, 1] == HIGH_LEN
    hva = int(ring_translate(t, np.uint64(HIGH + 0x1000), np.uint64(11)))
    assert ctypes.string_at(hva, 11) == b"mlx5 direct"


def test_klm_mkey_over_regions_and_a_hole(mlx5, guest):
    fw, store = mlx5.fw, mlx5.hca.mkeys
    r = fw.create_mkey(AccessMode.KLM, _klm_guest(guest), pd=guest["pd"], start_addr=0, len=HIGH + HIGH_LEN)
    assert r.status == Status.OK, r
    k = r.fields["mkey"]
    assert store.translate(k, LOW + 0x100, 0x100) == (LOW, 0x100)
    assert store.translate(k, HIGH + 0x2000, 0x100) == (HIGH, 0x2000)
    # the hole is the null mkey: refused, and so is a range leaving a region into it
    assert store.translate(k, LOW_LEN + 0x1000, 16) is None
    assert store.translate(k, LOW_LEN - 8, 16) is None
    assert store.translate(k, HIGH - 8, 16) is None
    assert store.translate(k, HIGH + HIGH_LEN, 1) is None  # past the mkey
    t = store.regions(k)
    assert [tuple(int(x) for x in row[:2]) for row in t] == [(LOW, LOW_LEN), (HIGH, HIGH_LEN)]
    assert int(ring_translate(t, np.uint64(LOW_LEN + 0x1000), np.uint64(16))) == 0
    _poke(guest["fds"][LOW], 0x40, b"low")
    _poke(guest["fds"][HIGH], 0x40, b"high")
    assert ctypes.string_at(int(ring_translate(t, np.uint64(LOW + 0x40), np.uint64(3))), 3) == b"low"
    assert ctypes.string_at(int(ring_translate(t, np.uint64(HIGH + 0x40), np.uint64(4))), 4) == b"high"
    # the regions' direct mkeys are in use while the indirect one lives
    r = fw.destroy_mkey(guest["mr"][LOW])
    assert (r.status, r.syndrome) == (Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    assert fw.destroy_mkey(k).status == Status.OK
    assert fw.destroy_mkey(guest["mr"][LOW]).status == Status.OK


def test_klm_fbs_mkey_matches_klm(mlx5, guest):
    """KLM_FBS: fixed 2 MiB entities (the GCD of 2 MiB, 2 MiB hole, 4 MiB); same translation as KLM."""
    fw, store = mlx5.fw, mlx5.hca.mkeys
    ent = 2 * MIB
    klms = [(0, guest["mr"][LOW], LOW), (0, guest["null"], 0), (0, guest["mr"][HIGH], HIGH),
            (0, guest["mr"][HIGH], HIGH + ent)]
    r = fw.create_mkey(AccessMode.KLM_FBS, klms, pd=guest["pd"], start_addr=0, len=HIGH + HIGH_LEN,
                       log_entity_size=21)
    assert r.status == Status.OK, r
    fbs = r.fields["mkey"]
    klm = fw.create_mkey(AccessMode.KLM, _klm_guest(guest), pd=guest["pd"], start_addr=0,
                         len=HIGH + HIGH_LEN).fields["mkey"]
    # the two high entities continue the same memory: one segment, one region row
    assert store.segments(fbs) == store.segments(klm) == [(LOW, LOW_LEN, LOW), (HIGH, HIGH_LEN, HIGH)]
    assert np.array_equal(store.regions(fbs), store.regions(klm))
    # a buffer across the two high entities translates
    assert store.translate(fbs, HIGH + ent - 32, 64) == (HIGH, ent - 32)
    for addr in (LOW + 5, LOW_LEN, LOW_LEN + MIB, HIGH, HIGH + HIGH_LEN - 1):
        assert store.translate(fbs, addr, 1) == store.translate(klm, addr, 1)


def test_klm_fbs_last_entity_may_be_partial(mlx5, guest):
    fw = mlx5.fw
    r = fw.create_mkey(AccessMode.KLM_FBS, [(0, guest["mr"][HIGH], HIGH), (0, guest["mr"][HIGH], HIGH + 0x1000)],
                       pd=guest["pd"], start_addr=0x10000, len=0x1800, log_entity_size=12)
    assert r.status == Status.OK
    store = mlx5.hca.mkeys
    assert store.segments(r.fields["mkey"]) == [(0x10000, 0x1800, HIGH)]


def test_klm_2gib_split_translates_across_the_split(mlx5):
    """A 3 GiB region needs two KLM entries (at most 2 GiB each); a buffer across the split is
    still one region row for the ring kernels (the entries continue the same memory)."""
    base = 4 * GIB
    fd = mlx5.map_memory(base, 3 * GIB)  # sparse: only touched pages use memory
    fw = mlx5.fw
    pd = fw.alloc_pd().fields["pd"]
    mr = fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=base, len=3 * GIB, mtt_iova=base).fields["mkey"]
    klms = [(MAX_KLM_BYTE_COUNT, mr, base), (GIB, mr, base + MAX_KLM_BYTE_COUNT)]
    r = fw.create_mkey(AccessMode.KLM, klms, pd=pd, start_addr=base, len=3 * GIB)
    assert r.status == Status.OK, r
    k = r.fields["mkey"]
    split = base + MAX_KLM_BYTE_COUNT
    assert mlx5.hca.mkeys.translate(k, split - 8, 16) == (base, MAX_KLM_BYTE_COUNT - 8)
    t = mlx5.hca.mkeys.regions(k)
    assert t.shape == (1, 3) and int(t[0, 1]) == 3 * GIB
    _poke(fd, MAX_KLM_BYTE_COUNT - 8, b"across the split")
    hva = int(ring_translate(t, np.uint64(split - 8), np.uint64(16)))
    assert ctypes.string_at(hva, 16) == b"across the split"
    # KLM_FBS with 2 GiB entities (log 31, the largest): the same single row
    r = fw.create_mkey(AccessMode.KLM_FBS, [(0, mr, base), (0, mr, split)], pd=pd, start_addr=base, len=3 * GIB,
                       log_entity_size=31)
    assert r.status == Status.OK, r
    assert np.array_equal(mlx5.hca.mkeys.regions(r.fields["mkey"]), t)
    # one entry over 2 GiB is refused
    r = fw.create_mkey(AccessMode.KLM, [(MAX_KLM_BYTE_COUNT + 0x1000, mr, base)], pd=pd, start_addr=base,
                       len=MAX_KLM_BYTE_COUNT + 0x1000)
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.KLM_BYTE_COUNT)


def test_klm_entries_of_two_regions_that_do_not_continue_stay_apart(mlx5, guest):
    """Two regions back to back in the mkey space but not in memory: a buffer across them is refused."""
    fw, store = mlx5.fw, mlx5.hca.mkeys
    r = fw.create_mkey(AccessMode.KLM, [(0x1000, guest["mr"][LOW], LOW), (0x1000, guest["mr"][HIGH], HIGH)],
                       pd=guest["pd"], start_addr=0x100000000, len=0x2000)
    k = r.fields["mkey"]
    assert store.translate(k, 0x100000000 + 0xFF8, 8) == (LOW, 0xFF8)
    assert store.translate(k, 0x100000000 + 0x1000, 8) == (HIGH, 0)
    assert store.translate(k, 0x100000000 + 0xFF8, 16) is None
    assert len(store.regions(k)) == 2


def test_unmapped_memory_under_an_mkey_is_refused_not_read(mlx5, guest):
    store = mlx5.hca.mkeys
    k = guest["mr"][HIGH]
    mlx5.dma.unmap(HIGH)
    assert store.translate(k, HIGH, 16) is None
    assert store.regions(k).shape == (0, 3)


@pytest.mark.parametrize("case,status,syn", [
    ("direct over unmapped memory", Status.BAD_PARAM, Syn.UNMAPPED),
    ("direct across two mappings", Status.BAD_PARAM, Syn.UNMAPPED),
    ("direct with KLM entries", Status.BAD_PARAM, Syn.KLM_COUNT),
    ("zero length", Status.BAD_PARAM, Syn.BAD_LENGTH),
    ("wrapping length", Status.BAD_PARAM, Syn.BAD_LENGTH),
    ("PA access mode", Status.BAD_PARAM, Syn.BAD_ACCESS_MODE),
    ("unknown pd", Status.BAD_RESOURCE, Syn.UNKNOWN_PD),
    ("KLM with no entries", Status.BAD_PARAM, Syn.KLM_COUNT),
    ("KLM too many entries", Status.EXCEED_LIM, Syn.KLM_COUNT),
    ("KLM entries short of len", Status.BAD_PARAM, Syn.KLM_BYTE_COUNT),
    ("KLM zero byte_count", Status.BAD_PARAM, Syn.KLM_BYTE_COUNT),
    ("KLM entity size", Status.BAD_PARAM, Syn.ENTITY_SIZE),
    ("KLM unknown target", Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY),
    ("KLM indirect target", Status.BAD_PARAM, Syn.KLM_TARGET),
    ("KLM entry leaves its target", Status.BAD_PARAM, Syn.KLM_TARGET),
    ("KLM target of another pd", Status.BAD_PARAM, Syn.KLM_TARGET),
    ("FBS entity below 4 KiB", Status.BAD_PARAM, Syn.ENTITY_SIZE),
    ("FBS entity of 4 GiB (log 32: wider than the field)", Status.BAD_PARAM, Syn.FIELD_TOO_WIDE),
    ("FBS wrong entry count", Status.BAD_PARAM, Syn.KLM_COUNT),
    ("FBS entity leaves its target", Status.BAD_PARAM, Syn.KLM_TARGET),
    ("klm_num beyond the input", Status.BAD_INPUT_LEN, Syn.IN_TOO_SHORT),
    ("access mode too wide", Status.BAD_PARAM, Syn.FIELD_TOO_WIDE),
])
def test_hostile_create_mkey(mlx5, guest, case, status, syn):
    fw = mlx5.fw
    pd, lo, hi, null = guest["pd"], guest["mr"][LOW], guest["mr"][HIGH], guest["null"]
    other_pd = fw.alloc_pd().fields["pd"]
    klm = fw.create_mkey(AccessMode.KLM, [(0x1000, lo, LOW)], pd=pd, start_addr=0, len=0x1000).fields["mkey"]
    before = len(mlx5.hca.mkeys)
    d = dict(pd=pd, start_addr=0, len=0x1000)
    K, F = AccessMode.KLM, AccessMode.KLM_FBS
    r = {
        "direct over unmapped memory": lambda: fw.create_mkey(AccessMode.MTT, **{**d, "mtt_iova": 3 * MIB}),
        "direct across two mappings": lambda: fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=0, len=HIGH + 0x1000,
                                                             mtt_iova=LOW),
        "direct with KLM entries": lambda: fw.create_mkey(AccessMode.MTT, [(0x1000, lo, LOW)], **d),
        "zero length": lambda: fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=0, len=0),
        "wrapping length": lambda: fw.create_mkey(AccessMode.MTT, pd=pd, start_addr=1 << 63, len=1 << 63 | 1),
        "PA access mode": lambda: fw.create_mkey(AccessMode.PA, **d),
        "unknown pd": lambda: fw.create_mkey(AccessMode.MTT, pd=999, start_addr=0, len=0x1000, mtt_iova=LOW),
        "KLM with no entries": lambda: fw.create_mkey(K, [], **d),
        "KLM too many entries": lambda: fw.create_mkey(K, [(1, null, 0)] * 2049, pd=pd, start_addr=0, len=2049),
        "KLM entries short of len": lambda: fw.create_mkey(K, [(0x800, lo, LOW)], **d),
        "KLM zero byte_count": lambda: fw.create_mkey(K, [(0, lo, LOW), (0x1000, lo, LOW)], **d),
        "KLM entity size": lambda: fw.create_mkey(K, [(0x1000, lo, LOW)], log_entity_size=12, **d),
        "KLM unknown target": lambda: fw.create_mkey(K, [(0x1000, 0x4242, 0)], **d),
        "KLM indirect target": lambda: fw.create_mkey(K, [(0x1000, klm, 0)], **d),
        "KLM entry leaves its target": lambda: fw.create_mkey(K, [(0x1000, lo, LOW_LEN - 0x800)], **d),
        "KLM target of another pd": lambda: fw.create_mkey(K, [(0x1000, lo, LOW)], pd=other_pd, start_addr=0,
                                                           len=0x1000),
        "FBS entity below 4 KiB": lambda: fw.create_mkey(F, [(0, lo, LOW)] * 2, log_entity_size=11, **d),
        "FBS entity of 4 GiB (log 32: wider than the field)": lambda: fw.create_mkey(F, [(0, lo, LOW)], log_entity_size=32,
                                                                                       **d),
        "FBS wrong entry count": lambda: fw.create_mkey(F, [(0, lo, LOW)] * 2, log_entity_size=12, **d),
        "FBS entity leaves its target": lambda: fw.create_mkey(F, [(0, hi, HIGH + HIGH_LEN - 0x800)],
                                                               log_entity_size=12, **d),
        "klm_num beyond the input": lambda: fw.create_mkey(K, [(0x1000, lo, LOW)], klm_num=2, **d),
        "access mode too wide": lambda: fw.create_mkey(7, **d),
    }[case]()
    assert (r.status, r.syndrome) == (status, syn), (case, r)
    assert len(mlx5.hca.mkeys) == before  # nothing was created
    assert mlx5.hca.mkeys.mkeys[lo].users == 1  # the KLM mkey above, and no leaked reference


def test_destroy_mkey_refusals(mlx5, guest):
    fw = mlx5.fw
    r = fw.destroy_mkey(guest["null"])
    assert (r.status, r.syndrome) == (Status.BAD_PARAM, Syn.NULL_MKEY)
    r = fw.destroy_mkey(0x4242)
    assert (r.status, r.syndrome) == (Status.BAD_RESOURCE, Syn.UNKNOWN_MKEY)
    r = fw.dealloc_pd(guest["pd"])
    assert (r.status, r.syndrome) == (Status.RESOURCE_BUSY, Syn.OBJECT_IN_USE)
    for k in guest["mr"].values():
        assert fw.destroy_mkey(k).status == Status.OK
    assert fw.dealloc_pd(guest["pd"]).status == Status.OK


def test_mkey_key_byte_is_the_callers(mlx5, guest):
    r = mlx5.fw.create_mkey(AccessMode.MTT, pd=guest["pd"], start_addr=0, len=0x1000, mtt_iova=LOW, mkey_7_0=0xA5)
    assert r.status == Status.OK and r.fields["mkey"] & 0xFF == 0xA5
    assert r.fields["mkey"] not in guest["mr"].values()
