"""The mlx5 indirect mkey layout over guest memory (facts §3.3)."""

import pytest
import structlog
from hypothesis import given, settings, strategies as st

from dataplane.vdpa.mlx5.mem import (
    CACHE_LINE_SIZE,
    DEVX_MAX_KLM_ENTRIES,
    KLM_ENTRY_SIZE,
    MAX_KLM_BYTE_COUNT,
    MIN_KLM_FIXED_BUFFER_SIZE,
    MODE_KLM,
    MODE_KLM_FBS,
    KlmEntry,
    MemLayoutError,
    choose_mode,
    layout_gcd,
    mkey_layout,
    same_layout,
    sort_regions,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def check_cover(layout, regions):
    """Entries tile [first GPA, last GPA + size) in order; direct entries lie in their region, null ones in holes."""
    regs = sort_regions(regions)
    pos = layout.start
    assert layout.start == regs[0].gpa
    assert layout.mem_size == regs[-1].gpa + regs[-1].size - regs[0].gpa
    for e in layout.entries:
        assert e.gpa == pos and e.size > 0
        pos += e.size
        inside = [r for r in regs if r.gpa <= e.gpa and e.gpa + e.size <= r.gpa + r.size]
        if e.kind == "direct":
            assert len(inside) == 1 and inside[0].index == e.region
        else:
            assert e.kind == "null" and e.region is None
            assert not any(r.gpa < e.gpa + e.size and e.gpa < r.gpa + r.size for r in regs)
        if layout.mode == MODE_KLM:
            assert e.size <= MAX_KLM_BYTE_COUNT
        else:
            assert e.size == layout.gcd
    assert pos == layout.start + layout.mem_size


def test_constants_and_their_sources():
    assert MAX_KLM_BYTE_COUNT == 2 * GiB
    assert MIN_KLM_FIXED_BUFFER_SIZE == 4 * KiB
    assert DEVX_MAX_KLM_ENTRIES == 4078  # (0xFFFF - 272) // 16
    assert CACHE_LINE_SIZE // KLM_ENTRY_SIZE == 4


def test_typical_qemu_layout_two_regions_with_a_hole_is_klm():
    # below 4G and above: 0..3G, 4G..5G (a 1 GiB hole); gcd 1 GiB: 5 FBS entries > 4, 3 KLM entries <= 4
    regions = [(4 * GiB, 1 * GiB), (0, 3 * GiB)]
    lay = mkey_layout(regions)
    assert lay.mode == MODE_KLM and lay.gcd == GiB and lay.log_entity_size == 0
    assert lay.entries == (KlmEntry("direct", 0, 2 * GiB, 1), KlmEntry("direct", 2 * GiB, 1 * GiB, 1),
                           KlmEntry("null", 3 * GiB, 1 * GiB, None), KlmEntry("direct", 4 * GiB, 1 * GiB, 0))
    check_cover(lay, regions)


def test_one_region_is_fbs_when_it_fits():
    lay = mkey_layout([(0, 512 * MiB)])
    assert lay.mode == MODE_KLM_FBS and lay.gcd == 512 * MiB and lay.log_entity_size == 29
    assert lay.entries == (KlmEntry("direct", 0, 512 * MiB, 0),)


def test_gcd_capped_at_2g():
    lay = mkey_layout([(0, 8 * GiB)])
    assert lay.gcd == 2 * GiB and lay.mode == MODE_KLM_FBS and len(lay.entries) == 4
    assert lay.log_entity_size == 31


def test_gcd_not_a_power_of_two_takes_the_largest_power_dividing_it():
    regs = sort_regions([(0, 12 * KiB), (1 * MiB, 24 * KiB)])  # sizes 12K, 24K, hole 1M-12K: gcd 4K
    assert layout_gcd(regs) == 4 * KiB
    regs = sort_regions([(0, 3 * MiB)])  # gcd 3M -> 1M (2M would not divide 3M)
    assert layout_gcd(regs) == 1 * MiB
    regs = sort_regions([(0, 6 * GiB), (8 * GiB, 6 * GiB)])  # gcd 2G (6G, 2G hole): stays 2G
    assert layout_gcd(regs) == 2 * GiB
    regs = sort_regions([(0, 12 * GiB)])  # above 2G: gcd(12G, 2G) = 2G
    assert layout_gcd(regs) == 2 * GiB


def test_choose_mode_rules():
    assert choose_mode(2 * KiB, 1, 1) == MODE_KLM  # gcd below 4K
    assert choose_mode(4 * KiB, 10, DEVX_MAX_KLM_ENTRIES + 1) == MODE_KLM  # too many FBS entries
    assert choose_mode(4 * KiB, 4, 5) == MODE_KLM  # KLM in a cache line, FBS not
    assert choose_mode(4 * KiB, 5, 6) == MODE_KLM_FBS  # neither in a line
    assert choose_mode(4 * KiB, 4, 4) == MODE_KLM_FBS  # both in a line
    assert choose_mode(4 * KiB, 5, DEVX_MAX_KLM_ENTRIES) == MODE_KLM_FBS
    assert choose_mode(4 * KiB, 1, DEVX_MAX_KLM_ENTRIES) == MODE_KLM  # the cache-line rule
    assert choose_mode(4 * KiB, 10, 100, max_entries=50) == MODE_KLM


def test_three_mib_region():
    lay = mkey_layout([(0, 3 * MiB)])
    # gcd 1M, 3 FBS entries, 1 KLM entry: both fit a cache line -> KLM_FBS
    assert lay.mode == MODE_KLM_FBS and lay.gcd == MiB and len(lay.entries) == 3


def test_small_gcd_forces_klm_and_splits_at_2g():
    regions = [(0, 5 * GiB + 2 * KiB)]
    lay = mkey_layout(regions)
    assert lay.mode == MODE_KLM and lay.gcd == 2 * KiB
    assert [e.size for e in lay.entries] == [2 * GiB, 2 * GiB, 1 * GiB + 2 * KiB]
    check_cover(lay, regions)


def test_too_fragmented():
    # 4 KiB regions with 4 KiB holes: gcd 4K, KLM_FBS; 2100 regions -> 4199 entries > 4078
    regions = [(i * 8 * KiB, 4 * KiB) for i in range(2100)]
    with structlog.testing.capture_logs() as logs, pytest.raises(MemLayoutError, match="too fragmented"):
        mkey_layout(regions)
    assert any("too fragmented" in e["event"] for e in logs)
    lay = mkey_layout(regions[:2000])  # 3999 entries
    assert lay.mode == MODE_KLM_FBS and len(lay.entries) == 3999
    check_cover(lay, regions[:2000])
    # a smaller limit (the card's own) is honoured
    with pytest.raises(MemLayoutError, match="too fragmented"):
        mkey_layout(regions[:2000], max_entries=2048)


def test_region_count():
    with pytest.raises(MemLayoutError, match="Invalid number of memory regions"):
        mkey_layout([])
    # 0xFFFF regions back to back in one KLM_FBS entry each would exceed the entries first; with a huge limit the
    # count rule is what refuses them
    regions = [(i * 4 * KiB, 4 * KiB) for i in range(0xFFFF)]
    with pytest.raises(MemLayoutError, match="Invalid number of memory regions"):
        mkey_layout(regions, max_entries=1 << 20)
    assert len(mkey_layout(regions[:0xFFFE], max_entries=1 << 20).regions) == 0xFFFE


def test_overlapping_regions_are_refused():
    with pytest.raises(MemLayoutError, match="overlap"):
        mkey_layout([(0, 8 * KiB), (4 * KiB, 8 * KiB)])


def test_regions_as_vhost_mappings_and_region_index_is_the_callers():
    regions = [{"guest_phys_addr": 1 * GiB, "size": 1 * GiB, "fd": 5}, {"guest_phys_addr": 0, "size": 512 * MiB}]
    lay = mkey_layout(regions)
    assert [e.region for e in lay.entries if e.kind == "direct"][0] == 1
    check_cover(lay, regions)


def test_same_layout_reuse_rule():
    a = [(0, GiB), (4 * GiB, GiB)]
    assert same_layout(a, list(reversed(a)))  # order of the table does not matter: both sorted by GPA
    assert same_layout(a, [{"guest_phys_addr": 0, "size": GiB}, {"guest_phys_addr": 4 * GiB, "size": GiB}])
    assert not same_layout(a, [(0, GiB), (4 * GiB, 2 * GiB)])
    assert not same_layout(a, [(0, GiB)])
    assert not same_layout(a, [(0, GiB), (5 * GiB, GiB)])
    assert not same_layout(None, a)


sizes = st.integers(min_value=1, max_value=64).map(lambda n: n * 4 * KiB) | st.sampled_from(
    [2 * KiB, 1 * MiB, 3 * MiB, 1 * GiB, 3 * GiB, 5 * GiB + 4 * KiB])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(sizes, st.integers(min_value=0, max_value=4) .map(lambda h: h * 4 * KiB) | sizes),
                min_size=1, max_size=12), st.integers(min_value=0, max_value=1 << 20), st.randoms())
def test_property_entries_tile_guest_memory(parts, base, rnd):
    regions, gpa = [], base * 4 * KiB
    for size, hole in parts:
        regions.append((gpa, size))
        gpa += size + hole
    rnd.shuffle(regions)
    try:
        lay = mkey_layout(regions)
    except MemLayoutError as e:
        assert "too fragmented" in str(e)
        return
    check_cover(lay, regions)
    g = lay.gcd
    assert g & (g - 1) == 0 and g <= MAX_KLM_BYTE_COUNT
    for r in lay.regions:
        assert r.size % g == 0
    if lay.mode == MODE_KLM_FBS:
        assert g >= MIN_KLM_FIXED_BUFFER_SIZE and lay.log_entity_size == g.bit_length() - 1
        assert len(lay.entries) == lay.mem_size // g
    assert same_layout(regions, list(reversed(regions)))
