"""Offered means implemented: every feature bit the back-end offers is exercised by a test.

The offers are read from the code, for each way a user can set a socket up:
the net device class (the vhost library's default, with and without
LINEARBUF_SUPPORT), the ``net_vhost`` port's devargs (default, ``tso=1``,
``postcopy-support=1``), the blk device (read-write and read-only); and the
protocol features each offers by default, with POSTCOPY_SUPPORT, and on
request (``driver_set_protocol_features``: the class's implemented set).

The tables below map every bit to the test nodes that exercise it.  This test
fails when an offered bit has no entry, when an entry names a bit no context
offers, or when a named test does not exist (the test files are parsed with
``ast``; a ``[param]`` suffix is not checked).  A bit that cannot be exercised
is not offered: see ``net.NOT_IMPLEMENTED`` / ``blk.device.NOT_IMPLEMENTED``,
refused by name (``test_device.py::test_no_control_queue_and_the_withdrawn_net_bits_are_refused_by_name``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from dataplane.ethdev.vhost import VhostPortArgs
from dataplane.vhost.blk.device import BlkDevice
from dataplane.vhost.blk.spec import VirtioBlkFeature as BF
from dataplane.vhost.library import (
    LINEARBUF_SUPPORT,
    POSTCOPY_SUPPORT,
    default_protocol_features,
    implemented_protocol_features,
)
from dataplane.vhost.net import NetDevice
from dataplane.vhost_user import VhostUserProtocolFeature as PF, VirtioFeature as VF

ROOT = Path(__file__).resolve().parents[2]

VN = "tests/vhost/test_virtio_net.py::"
DEV = "tests/vhost/test_device.py::"
LIB = "tests/vhost/test_library.py::"
LOG = "tests/vhost/test_dirty_log.py::"
CHAN = "tests/vhost/test_backend_channel.py::"
PC = "tests/vhost/test_postcopy.py::"
PORT = "tests/ethdev/test_vhost_port_offer.py::"
PMD = "tests/ethdev/test_vhost_port_testpmd.py::"
CLS = "tests/vhost/test_device_class.py::"
BREQ = "tests/vhost/blk/test_blk_requests.py::"
BBE = "tests/vhost/blk/test_blk_backend.py::"
BLOG = "tests/vhost/blk/test_blk_dirty_log.py::"
ENG = "tests/guests/test_engine_guests.py::"
BLKG = "tests/guests/test_blk_guest.py::"
MIG = "tests/guests/test_migration_guests.py::"

# -- virtio feature bits --------------------------------------------------------------------

NET_FEATURE_TESTS = {
    VF.VIRTIO_NET_F_CSUM: [VN + "test_offload_round_trip", VN + "test_offload_kept_from_one_guest_to_another",
                           VN + "test_offload_legacy_inexpressible_checksum_completed_at_dequeue"],
    VF.VIRTIO_NET_F_GUEST_CSUM: [VN + "test_offload_round_trip", VN + "test_offload_kept_from_one_guest_to_another",
                                 VN + "test_offload_enqueue_software_checksums"],
    VF.VIRTIO_NET_F_MTU: [DEV + "test_rarp_mtu_config_and_notification_intent", DEV + "test_mtu_needs_the_feature"],
    VF.VIRTIO_NET_F_GUEST_TSO4: [VN + "test_offload_round_trip",
                                 VN + "test_tso_cut_in_software_for_a_guest_without_guest_tso",
                                 ENG + "test_tso_handed_on_or_cut_in_software"],
    VF.VIRTIO_NET_F_GUEST_TSO6: [VN + "test_tso_ipv6_cut_in_software_or_handed_on",
                                 VN + "test_ecn_cwr_stays_on_the_first_segment[ipv6]"],
    VF.VIRTIO_NET_F_GUEST_ECN: [VN + "test_ecn_cwr_stays_on_the_first_segment"],
    VF.VIRTIO_NET_F_HOST_TSO4: [VN + "test_offload_round_trip",
                                VN + "test_tso_cut_in_software_for_a_guest_without_guest_tso",
                                PORT + "test_devargs_decide_the_offer_on_the_wire",
                                ENG + "test_tso_handed_on_or_cut_in_software"],
    VF.VIRTIO_NET_F_HOST_TSO6: [VN + "test_tso_ipv6_cut_in_software_or_handed_on",
                                PORT + "test_devargs_decide_the_offer_on_the_wire"],
    VF.VIRTIO_NET_F_HOST_ECN: [VN + "test_ecn_cwr_stays_on_the_first_segment",
                               VN + "test_ecn_bit_refused_without_host_ecn_and_gso_udp_never_accepted",
                               LIB + "test_linearbuf_without_extbuf_withdraws_segmentation_offloads"],
    VF.VIRTIO_NET_F_MRG_RXBUF: [VN + "test_round_trip", DEV + "test_header_length_follows_negotiation"],
    VF.VIRTIO_NET_F_GUEST_ANNOUNCE: [VN + "test_guest_announce_frames_pass_and_no_rarp_is_injected",
                                     MIG + "test_guest_migrates_between_dataplane_backends_without_losing_a_byte"],
    VF.VIRTIO_NET_F_MQ: [DEV + "test_without_mq_only_the_first_pair_is_kept", PMD + "test_two_queues_both_carry_traffic",
                         ENG + "test_two_guests_two_queue_pairs_both_carry_traffic"],
    VF.VHOST_F_LOG_ALL: [DEV + "test_set_features_while_running_may_only_toggle_log_all",
                         LOG + "test_set_log_base_maps_replies_and_replaces_the_log_under_running_rings",
                         "tests/vhost/test_dirty_log_lcores.py::test_lcores_log_exactly_what_they_write",
                         MIG + "test_guest_migrates_between_dataplane_backends_without_losing_a_byte"],
    VF.VIRTIO_F_ANY_LAYOUT: [VN + "test_tiny_descriptors_header_straddles", VN + "test_round_trip"],
    VF.VIRTIO_RING_F_INDIRECT_DESC: [VN + "test_round_trip[split-mrg-ooo-ind]", VN + "test_bad_chains"],
    VF.VIRTIO_RING_F_EVENT_IDX: [VN + "test_interrupts[flags-split]", VN + "test_interrupts[event_idx-packed]"],
    VF.VHOST_USER_F_PROTOCOL_FEATURES: [DEV + "test_rings_start_stopped_and_disabled_with_protocol_features",
                                        DEV + "test_kick_enables_ring_without_protocol_features"],
    VF.VIRTIO_F_VERSION_1: [DEV + "test_header_length_follows_negotiation", VN + "test_round_trip"],
    VF.VIRTIO_F_RING_PACKED: [VN + "test_round_trip[packed-mrg-inorder-ind]",
                              DEV + "test_get_vring_base_packed_carries_wrap_counters"],
    VF.VIRTIO_F_IN_ORDER: [VN + "test_round_trip[split-nomrg-inorder-direct]"],
}

BLK_FEATURE_TESTS = {
    BF.VIRTIO_BLK_F_SEG_MAX: [BREQ + "test_seg_max_data_segments_in_one_request",
                              BBE + "test_features_queue_count_and_config_space"],
    BF.VIRTIO_BLK_F_BLK_SIZE: [BBE + "test_features_queue_count_and_config_space", BREQ + "test_last_sector_is_usable"],
    BF.VIRTIO_BLK_F_FLUSH: [BREQ + "test_flush_syncs_the_file"],
    BF.VIRTIO_BLK_F_MQ: [BBE + "test_features_queue_count_and_config_space",
                         BLKG + "test_two_queues_both_carry_requests"],
    BF.VIRTIO_BLK_F_DISCARD: [BREQ + "test_write_zeroes_and_discard_zero_their_segments",
                              BREQ + "test_discard_and_write_zeroes_not_negotiated_are_unsupported",
                              "tests/vhost/blk/test_blk_hostile.py::test_bad_discard_and_write_zeroes_segments"],
    BF.VIRTIO_BLK_F_WRITE_ZEROES: [BREQ + "test_write_zeroes_and_discard_zero_their_segments",
                                   BREQ + "test_discard_and_write_zeroes_not_negotiated_are_unsupported"],
    BF.VIRTIO_BLK_F_RO: [BREQ + "test_readonly_disk_refuses_writes", BBE + "test_file_disk_readonly",
                         BLKG + "test_readonly_disk_refuses_guest_writes"],
    VF.VIRTIO_F_VERSION_1: [BREQ + "test_any_layout_header_split_and_status_shared_with_data"],
    VF.VHOST_USER_F_PROTOCOL_FEATURES: [BBE + "test_features_queue_count_and_config_space",
                                        CLS + "test_one_ready_vring_starts_the_device_and_its_data_path"],
    VF.VIRTIO_F_RING_PACKED: [BREQ + "test_write_then_read_back[packed]", BBE + "test_requests_served_by_the_lcore[packed]",
                              BLKG + "test_packed_ring_guest"],
    VF.VIRTIO_RING_F_EVENT_IDX: [BREQ + "test_many_requests_in_one_burst_and_interrupts"],
    VF.VIRTIO_RING_F_INDIRECT_DESC: [BREQ + "test_scattered_data_and_indirect_tables"],
    VF.VHOST_F_LOG_ALL: [BLOG + "test_exactly_the_written_pages_are_logged", BLOG + "test_logging_toggled_between_bursts",
                         BBE + "test_dirty_log_marked_by_the_lcore", MIG + "test_blk_guest_migrates_while_writing"],
}

# -- protocol feature bits ------------------------------------------------------------------

#: The state machine's own (device-generic) protocol features: the same tests serve net and blk.
GENERIC_PROTOCOL_TESTS = {
    PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD: [LOG + "test_set_log_base_maps_replies_and_replaces_the_log_under_running_rings",
                                         LOG + "test_set_log_base_needs_log_shmfd_and_a_mappable_log"],
    PF.VHOST_USER_PROTOCOL_F_REPLY_ACK: [DEV + "test_need_reply_gets_0_on_success_and_1_on_failure",
                                         CHAN + "test_config_change_is_acked_while_the_front_end_reads_the_config"],
    PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ: [DEV + "test_backend_req_fd_makes_a_channel_and_a_new_one_replaces_it",
                                           CHAN + "test_requests_are_matched_in_order"],
    PF.VHOST_USER_PROTOCOL_F_BACKEND_SEND_FD: [CHAN + "test_host_notifier_carries_the_page_fd_and_nofd_withdraws_it"],
    PF.VHOST_USER_PROTOCOL_F_HOST_NOTIFIER: [CHAN + "test_host_notifier_carries_the_page_fd_and_nofd_withdraws_it",
                                             CHAN + "test_host_notifier_refused_unless_negotiated",
                                             "tests/guests/test_host_notifier.py::"
                                             "test_qemu_maps_our_page_as_the_vring_doorbell_and_nofd_withdraws_it"],
    PF.VHOST_USER_PROTOCOL_F_RESET_DEVICE: [DEV + "test_reset_device_keeps_owner_and_protocol_features",
                                            DEV + "test_reset_device_needs_the_protocol_feature",
                                            CLS + "test_config_space_and_device_requests"],
    PF.VHOST_USER_PROTOCOL_F_STATUS: [DEV + "test_status_driver_ok_gates_new_device"],
    PF.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS: [DEV + "test_add_and_remove_memory_regions",
                                                   DEV + "test_mem_slot_requests_need_the_protocol_feature"],
    PF.VHOST_USER_PROTOCOL_F_PAGEFAULT: [PC + "test_pagefault_is_offered_only_with_postcopy_support",
                                         PC + "test_main_process_fault_is_served_by_the_front_end",
                                         PC + "test_lcore_process_fault_is_relayed",
                                         MIG + "test_guest_migrates_with_postcopy_between_dataplane_backends"],
    PF.VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: [
        "tests/vhost/test_inflight.py::test_get_inflight_fd_gives_a_zeroed_area_in_the_negotiated_layout",
        "tests/vhost/test_inflight.py::test_backend_dies_mid_burst_nothing_lost_nothing_repeated",
        "tests/vhost/test_inflight_net_lcores.py::test_net_backend_killed_while_frames_flow_resumes_from_the_inflight_area",
        "tests/vhost/blk/test_blk_inflight.py::test_backend_sigkilled_under_load_resubmits_after_restart",
        BLKG + "test_backend_killed_mid_request_resubmits_inflight_after_reconnect",
    ],
}

NET_PROTOCOL_TESTS = {
    **GENERIC_PROTOCOL_TESTS,
    PF.VHOST_USER_PROTOCOL_F_MQ: [LIB + "test_queue_num", DEV + "test_without_mq_only_the_first_pair_is_kept"],
    PF.VHOST_USER_PROTOCOL_F_RARP: [DEV + "test_rarp_mtu_config_and_notification_intent", VN + "test_rarp_injection"],
    PF.VHOST_USER_PROTOCOL_F_MTU: [DEV + "test_rarp_mtu_config_and_notification_intent"],
    PF.VHOST_USER_PROTOCOL_F_CONFIG: [DEV + "test_config_space_access_rules"],  # net: on request only
}

BLK_PROTOCOL_TESTS = {
    # not PAGEFAULT: POSTCOPY_SUPPORT is refused for blk
    # (test_postcopy.py::test_postcopy_support_is_refused_for_a_device_whose_lcores_do_not_register_with_the_relay)
    **{k: v for k, v in GENERIC_PROTOCOL_TESTS.items() if k != PF.VHOST_USER_PROTOCOL_F_PAGEFAULT},
    PF.VHOST_USER_PROTOCOL_F_MQ: [BBE + "test_features_queue_count_and_config_space"],
    PF.VHOST_USER_PROTOCOL_F_CONFIG: [BBE + "test_features_queue_count_and_config_space",
                                      BBE + "test_resize_grows_the_disk_under_the_lcore_and_tells_the_front_end"],
}
BLK_PROTOCOL_TESTS[PF.VHOST_USER_PROTOCOL_F_LOG_SHMFD] = [BBE + "test_dirty_log_marked_by_the_lcore"]
BLK_PROTOCOL_TESTS[PF.VHOST_USER_PROTOCOL_F_BACKEND_REQ] = [
    BBE + "test_resize_grows_the_disk_under_the_lcore_and_tells_the_front_end",
    BLKG + "test_disk_grows_while_the_guest_runs_and_the_guest_sees_it",
]

# -- the offers, from the code ------------------------------------------------------------------


def _port(devargs: str) -> VhostPortArgs:
    return VhostPortArgs(f"net_vhost0,iface=/tmp/offered-bits.sock{devargs}")


def _blk(readonly: bool) -> BlkDevice:
    return BlkDevice(sectors=8, readonly=readonly)


@functools.cache
def virtio_offers() -> dict[str, tuple[int, dict]]:
    """context -> (offered virtio feature mask, the table that must cover it)."""
    net = NetDevice()
    return {
        "net": (net.offered_features(0), NET_FEATURE_TESTS),
        "net LINEARBUF_SUPPORT": (net.offered_features(LINEARBUF_SUPPORT), NET_FEATURE_TESTS),
        "net_vhost": (_port("").offered_features(), NET_FEATURE_TESTS),
        "net_vhost tso=1": (_port(",tso=1").offered_features(), NET_FEATURE_TESTS),
        "net_vhost tso=1 linear-buffer=1 ext-buffer=1":
            (_port(",tso=1,linear-buffer=1,ext-buffer=1").offered_features(), NET_FEATURE_TESTS),
        "blk": (_blk(False).offered_features(0), BLK_FEATURE_TESTS),
        "blk readonly": (_blk(True).offered_features(0), BLK_FEATURE_TESTS),
    }


@functools.cache
def protocol_offers() -> dict[str, tuple[int, dict]]:
    net, blk = NetDevice(), _blk(False)
    return {
        "net": (default_protocol_features(net), NET_PROTOCOL_TESTS),
        "net POSTCOPY_SUPPORT": (default_protocol_features(net, POSTCOPY_SUPPORT), NET_PROTOCOL_TESTS),
        "net on request": (implemented_protocol_features(net, POSTCOPY_SUPPORT), NET_PROTOCOL_TESTS),
        "net_vhost postcopy-support=1":
            (default_protocol_features(net, _port(",postcopy-support=1").flags()), NET_PROTOCOL_TESTS),
        "blk": (default_protocol_features(blk), BLK_PROTOCOL_TESTS),
        "blk readonly": (default_protocol_features(_blk(True)), BLK_PROTOCOL_TESTS),
        "blk on request": (implemented_protocol_features(blk, POSTCOPY_SUPPORT), BLK_PROTOCOL_TESTS),
    }


def _bits(mask: int) -> set[int]:
    return {n for n in range(64) if mask >> n & 1}


def _name(table: dict, n: int) -> str:
    for k in table:
        if k == n:
            return getattr(k, "name", str(n))
    return f"bit {n}"


ALL = {**{f"virtio {k}": k for k in virtio_offers()}, **{f"protocol {k}": k for k in protocol_offers()}}


def _offer(label: str) -> tuple[int, dict]:
    kind, ctx = label.split(" ", 1)
    return (virtio_offers() if kind == "virtio" else protocol_offers())[ctx]


@pytest.mark.parametrize("label", list(ALL))
def test_every_offered_bit_has_tests(label):
    mask, table = _offer(label)
    missing = _bits(mask) - {int(k) for k in table}
    device = _blk(False) if table is BLK_FEATURE_TESTS else NetDevice()
    names = sorted(device.features_str(1 << n) if "virtio" in label else PF(n).name for n in missing)
    assert not missing, f"{label}: offered without a test entry: {names}"
    assert all(table[k] for k in table), f"{label}: an entry with no test"


@pytest.mark.parametrize("table,kind", [
    (NET_FEATURE_TESTS, "net virtio"), (BLK_FEATURE_TESTS, "blk virtio"),
    (NET_PROTOCOL_TESTS, "net protocol"), (BLK_PROTOCOL_TESTS, "blk protocol"),
], ids=["net-virtio", "blk-virtio", "net-protocol", "blk-protocol"])
def test_every_entry_names_an_offered_bit(table, kind):
    """An entry for a bit no context offers is stale: the bit was withdrawn, or never offered here."""
    device, what = kind.split()
    offers = virtio_offers() if what == "virtio" else protocol_offers()
    offered = set()
    for ctx, (mask, t) in offers.items():
        if t is table:
            offered |= _bits(mask)
    stale = {int(k) for k in table} - offered
    assert not stale, f"{kind}: entries for bits not offered: {sorted(_name(table, n) for n in stale)}"


@functools.cache
def _tests_in(path: str) -> set[str]:
    """``func`` and ``Class::func`` names of the test functions in a test file."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith("test"):
                    names.add(f"{node.name}::{sub.name}")
    return names


def _all_nodes():
    for table in (NET_FEATURE_TESTS, BLK_FEATURE_TESTS, NET_PROTOCOL_TESTS, BLK_PROTOCOL_TESTS):
        for nodes in table.values():
            yield from nodes


def test_every_named_test_exists():
    bad = []
    for node in sorted(set(_all_nodes())):
        path, _, name = node.partition("::")
        name = name.split("[", 1)[0]
        if not (ROOT / path).is_file() or name not in _tests_in(path):
            bad.append(node)
    assert not bad, f"named tests that do not exist: {bad}"


def test_the_withdrawn_bits_are_offered_nowhere():
    """What net.NOT_IMPLEMENTED / blk NOT_IMPLEMENTED list is in no offer (and has no entry)."""
    from dataplane.vhost.blk.device import NOT_IMPLEMENTED as BLK_NOT_IMPLEMENTED
    from dataplane.vhost.net import NOT_IMPLEMENTED as NET_NOT_IMPLEMENTED

    for ctx, (mask, table) in virtio_offers().items():
        gone = NET_NOT_IMPLEMENTED if table is NET_FEATURE_TESTS else BLK_NOT_IMPLEMENTED
        assert not mask & sum(1 << int(b) for b in gone), ctx
        assert not set(gone) & set(table), ctx
