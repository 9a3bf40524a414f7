"""``vdpa`` requests that fail: the kernel's validation order and messages, and the
tool's own parsing (prefix matching, options, usage, error strings, exit codes)."""

import os
import shutil
import subprocess

import pytest

from dataplane.testing.vdpa_mgmt import FakeMgmtdev, FakeNetDevice, vduse_like_mgmtdev
from dataplane.vdpa.mgmt import VdpaAttr, VdpaManagement
from dataplane.vdpa.mgmt.tool import DEV_HELP, HELP, MGMTDEV_HELP

EINVAL = "kernel answers: Invalid argument\n"
ENODEV = "kernel answers: No such device\n"
EOPNOTSUPP = "kernel answers: Operation not supported\n"


def err(msg, answer):
    return f"Error: {msg}\n{answer}"


def names(mgmt):
    return [d.name for d in mgmt.devices]


# ---------------------------------------------------------------------------- DEV_NEW validation, in order
def test_dev_new_max_vqp_zero_is_checked_first(mgmt, vdpa):
    # unknown mgmtdev, attributes it does not accept, and max_vqp 0: the max_vqp check wins
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "nosuch", "mac", "00:11:22:33:44:55", "max_vqp", "0",
                "device_features", "0x0") == (1, "", err("vdpa: At least one pair of VQs is required.", EINVAL))


def test_dev_new_missing_features_for_provided_attributes(mgmt, vdpa):
    # MAC (bit 5) and MTU (bit 3) missing from the provisioned features: 0x28; before the mgmtdev lookup
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "nosuch", "mac", "00:11:22:33:44:55", "mtu", "1500",
                "device_features", "300000000") == (
        1, "", err("vdpa: Missing features 0x28 for provided attributes.", EINVAL))
    # max_vqp > 1 needs MQ (bit 22)
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "max_vqp", "2", "device_features",
                "0x300000000") == (1, "", err("vdpa: Missing features 0x400000 for provided attributes.", EINVAL))
    # max_vqp 1 needs nothing
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "nosuch", "max_vqp", "1", "device_features",
                "0x300000000")[2] == err("vdpa: Fail to find the specified management device.", ENODEV)
    assert names(mgmt) == []


def test_dev_new_unknown_mgmtdev(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "nosuch") == (
        1, "", err("vdpa: Fail to find the specified management device.", ENODEV))
    # a bus name only matches a mgmtdev with that bus, and a bare name only one without
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "pci/vdpasim_net")[2] == err(
        "vdpa: Fail to find the specified management device.", ENODEV)


def test_dev_new_unsupported_attributes(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "max_vqp", "1") == (
        1, "", err("vdpa: Some provided attributes are not supported: 0x1000.", EOPNOTSUPP))
    # vdpasim_blk accepts nothing: mac 0x400, mtu 0x2000, features 0x100000
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_blk", "mac", "00:11:22:33:44:55", "mtu", "1500",
                "device_features", "0x300000028") == (
        1, "", err("vdpa: Some provided attributes are not supported: 0x102400.", EOPNOTSUPP))
    assert names(mgmt) == []


def test_dev_new_net_attributes_on_a_non_net_mgmtdev(runtime, vdpa):
    blkonly = FakeMgmtdev("blkonly", supported_classes=1 << 2, config_attr_mask=1 << VdpaAttr.DEV_NET_CFG_MACADDR)
    with VdpaManagement() as m:
        m.add_mgmtdev(blkonly)
        assert vdpa("dev", "add", "name", "x", "mgmtdev", "blkonly", "mac", "00:11:22:33:44:55") == (
            1, "", err("vdpa: Network class attributes provided on unsupported management device.", EINVAL))
        assert blkonly.added == []


def test_dev_new_ambiguous_features_on_a_multi_class_mgmtdev(runtime, vdpa):
    vduse = vduse_like_mgmtdev(config_attr_mask=1 << VdpaAttr.DEV_FEATURES)
    with VdpaManagement() as m:
        m.add_mgmtdev(vduse)
        assert vdpa("dev", "add", "name", "x", "mgmtdev", "vduse", "device_features", "0x300000020") == (
            1, "", err("vdpa: Management device supports multi-class while device features specified are ambiguous.",
                       EINVAL))
        assert vduse.added == []
        # transport bits only are not ambiguous: the request reaches the mgmtdev (which refuses it)
        assert vdpa("dev", "add", "name", "x", "mgmtdev", "vduse", "device_features", "0x300000000") == (
            1, "", EOPNOTSUPP)
        assert vduse.added == [("x", {"device_features": 0x300000000})]


def test_dev_new_refused_by_the_device(mgmt, vdpa):
    # vdpasim: provisioned features must be a subset of the supported ones (no extack message)
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "device_features", "0x308830029") == (
        1, "", EINVAL)
    assert names(mgmt) == []


def test_dev_new_duplicate_name(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net") == (0, "", "")
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_blk") == (1, "", "kernel answers: File exists\n")
    assert names(mgmt) == ["vdpa0"]


def test_dev_new_mtu_below_the_policy_minimum(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "nosuch", "mtu", "67", "max_vqp", "0") == (
        1, "", "Error: integer out of range.\nkernel answers: Numerical result out of range\n")
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "mtu", "68") == (0, "", "")
    assert mgmt.devices[0].mtu == 68


def test_dev_new_passes_the_provisioned_attributes(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "v", "mgmtdev", "vdpasim_net", "mac", "0:1:a:B:0c:FF", "mtu", "9000",
                "device_features", "308830028") == (0, "", "")
    assert mgmt.mgmtdevs[0].added == [("v", {"mac": bytes([0, 1, 0xA, 0xB, 0xC, 0xFF]), "mtu": 9000,
                                             "device_features": 0x308830028})]


# ---------------------------------------------------------------------------- DEV_DEL
def test_dev_del(mgmt, vdpa):
    assert vdpa("dev", "del", "nosuch") == (1, "", err("vdpa: device not found.", ENODEV))
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net")[0] == 0
    dev = mgmt.devices[0]
    assert vdpa("dev", "del", "vdpa0") == (0, "", "")
    assert dev.deleted and names(mgmt) == []
    assert vdpa("dev", "show", "vdpa0") == (1, "", err("vdpa: device not found.", ENODEV))


def test_unmanaged_devices_are_hidden_and_cannot_be_deleted(mgmt, vdpa):
    probed = FakeNetDevice("probed0", mgmt.mgmtdevs[0], user_created=False)
    mgmt.register_device(probed)
    assert vdpa("dev", "del", "probed0") == (
        1, "", err("vdpa: Only user created device can be deleted by user.", EINVAL))
    assert not probed.deleted
    assert vdpa("dev", "show") == (0, "", "")
    assert vdpa("dev", "show", "probed0") == (1, "", EINVAL)
    assert vdpa("dev", "config", "show", "probed0") == (1, "", err("vdpa: unmanaged vdpa device.", EINVAL))
    # its name is taken all the same
    assert vdpa("dev", "add", "name", "probed0", "mgmtdev", "vdpasim_net") == (1, "", "kernel answers: File exists\n")


def test_removing_a_mgmtdev_deletes_its_devices(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net")[0] == 0
    assert vdpa("dev", "add", "name", "blk0", "mgmtdev", "vdpasim_blk")[0] == 0
    net_dev = mgmt.devices[0]
    mgmt.remove_mgmtdev(mgmt.mgmtdevs[0])
    assert net_dev.deleted and names(mgmt) == ["blk0"]
    assert vdpa("mgmtdev", "show") == (0, "vdpasim_blk: \n  supported_classes block\n  max_supported_vqs 0\n"
                                          "  dev_features\n", "")


# ---------------------------------------------------------------------------- DEV_ATTR_SET
def test_dev_set_mac(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net")[0] == 0
    assert vdpa("dev", "add", "name", "blk0", "mgmtdev", "vdpasim_blk")[0] == 0
    assert vdpa("dev", "set", "name", "vdpa0", "mac", "00:11:22:33:44:66") == (0, "", "")
    assert vdpa("dev", "config", "show", "vdpa0")[1].startswith("vdpa0: mac 00:11:22:33:44:66 ")
    assert vdpa("dev", "set", "name", "vdpa0", "mac", "01:11:22:33:44:66") == (
        1, "", err("vdpa: Invalid MAC address.", EOPNOTSUPP))
    assert vdpa("dev", "set", "name", "vdpa0", "mac", "00:00:00:00:00:00") == (
        1, "", err("vdpa: Invalid MAC address.", EOPNOTSUPP))
    assert vdpa("dev", "set", "name", "nosuch", "mac", "00:11:22:33:44:66") == (
        1, "", err("vdpa: device not found.", ENODEV))
    # no mac: nothing to set
    assert vdpa("dev", "set", "name", "vdpa0") == (1, "", EOPNOTSUPP)
    # a non-net mgmtdev: the kernel warns but does not fail
    assert vdpa("dev", "set", "name", "blk0", "mac", "00:11:22:33:44:66") == (
        0, "", "Warning: vdpa: blk0 device not supported.\n")
    assert vdpa("dev", "set", "vdpa0") == (1, "", "device name is not set.\n")
    assert vdpa("dev", "se", "name", "vdpa0") == (1, "", 'Command "se" not found\n')


def test_dev_set_on_a_device_without_set_mac(runtime, vdpa):
    class NoSetMac(FakeNetDevice):
        set_mac = None

    with VdpaManagement() as m:
        m.add_mgmtdev(FakeMgmtdev("nomac", supported_classes=2, device_cls=NoSetMac))
        assert vdpa("dev", "add", "name", "n0", "mgmtdev", "nomac")[0] == 0
        assert vdpa("dev", "set", "name", "n0", "mac", "00:11:22:33:44:66") == (
            1, "", err("vdpa: Operation not supported by the device.", EOPNOTSUPP))


# ---------------------------------------------------------------------------- prefix matching
def test_prefix_matching(mgmt, vdpa):
    assert vdpa("dev", "a", "n", "vdpa0", "m", "vdpasim_net") == (0, "", "")  # add name mgmtdev
    line = "vdpa0: type network mgmtdev vdpasim_net vendor_id 0 max_vqs 3 max_vq_size 256\n"
    assert vdpa("d", "s") == (0, line, "")
    assert vdpa("de", "l") == (0, line, "")
    assert vdpa("d", "c", "s", "vdpa0")[1].startswith("vdpa0: mac 00:00:00:00:00:00 ")
    assert vdpa("m", "s", "vdpasim_blk")[1].startswith("vdpasim_blk: \n")
    assert vdpa("m") == (0, "", MGMTDEV_HELP)
    assert vdpa("m", "h") == (0, "", MGMTDEV_HELP)
    assert vdpa("d", "h") == (0, "", DEV_HELP)
    assert vdpa("h") == (0, "", HELP)
    # "ma" is a prefix of max_vqp (mac needs the exact word)
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "ma", "1") == (
        1, "", err("vdpa: Some provided attributes are not supported: 0x1000.", EOPNOTSUPP))
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "mt", "1500") == (1, "", 'Unknown option "mt"\n')
    assert vdpa("dev", "d", "vdpa0") == (0, "", "")  # d = del, not show
    assert vdpa("dev", "show") == (0, "", "")


def test_vstats_and_set_need_the_exact_word(mgmt, vdpa):
    assert vdpa("dev", "vstat", "show", "x", "qidx", "0") == (1, "", 'Command "vstat" not found\n')
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net")[0] == 0
    mgmt.devices[0].negotiate(mgmt.devices[0].device_features)
    assert vdpa("dev", "vstats", "show", "vdpa0", "q", "1") == (1, "", 'Unknown option "q"\n')


# ---------------------------------------------------------------------------- parsing errors
def test_unknown_object_command_and_option(mgmt, vdpa):
    assert vdpa("foo") == (1, "", 'Object "foo" not found\n')
    assert vdpa("") == (1, "", 'Object "" not found\n')
    assert vdpa("dev", "foo") == (1, "", 'Command "foo" not found\n')
    assert vdpa("mgmtdev", "foo") == (1, "", 'Command "foo" not found\n')
    assert vdpa("dev", "config", "foo") == (1, "", 'Command "foo" not found\n')
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net", "bogus", "1") == (
        1, "", 'Unknown option "bogus"\n')
    assert vdpa("dev", "show", "vdpa0", "bogus", "1") == (1, "", 'Unknown option "bogus"\n')


def test_missing_arguments(mgmt, vdpa):
    assert vdpa("dev", "add") == (1, "", "management device handle not set.\n")
    assert vdpa("dev", "add", "name", "x") == (1, "", "management device handle not set.\n")
    assert vdpa("dev", "add", "mgmtdev", "vdpasim_net") == (1, "", "device name is not set.\n")
    assert vdpa("dev", "del") == (1, "", "String parameter expected\n")
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "a/b/c") == (1, "", (
        "Wrong vdpa mgmtdev identification string format\n"
        'Expected "mgmtdev_bus_name/mgmtdev_name"\n'
        'Expected "mgmtdev_name"\n'))
    assert vdpa("mgmtdev", "show", "a/b/c")[0] == 1


def test_bad_values_fail_silently_like_iproute2(mgmt, vdpa):
    base = ["dev", "add", "name", "x", "mgmtdev", "vdpasim_net"]
    for bad in (["mtu", "abc"], ["mtu", "65536"], ["mtu", " -2"], ["mtu", "12x"], ["max_vqp", ""],
                ["device_features", "0xg"], ["device_features", "1" * 17]):
        assert vdpa(*base, *bad) == (1, "", ""), bad
    # like GNU getopt, "-1" is an option wherever it is
    assert vdpa(*base, "mtu", "-1") == (1, "", "vdpa: invalid option -- '1'\nUnknown option.\n" + HELP)
    assert vdpa(*base, "mac", "00:11:zz") == (1, "", '"zz" is invalid lladdr.\n')
    assert vdpa(*base, "mac", "00:11:100") == (1, "", '"100" is invalid lladdr.\n')
    assert vdpa("dev", "vstats", "show", "x", "qidx", "4294967296") == (1, "", "")
    assert names(mgmt) == []


def test_a_lone_trailing_keyword_is_ignored_like_iproute2(mgmt, vdpa):
    """iproute2 loops while NEXT_ARG_OK(): a last word without its value is never looked at."""
    assert vdpa("dev", "add", "name", "v1", "mgmtdev", "vdpasim_net", "mtu") == (0, "", "")
    assert mgmt.devices[0].mtu == 1500
    assert vdpa("dev", "add", "name", "v2", "mgmtdev", "vdpasim_net", "bogus") == (0, "", "")
    assert names(mgmt) == ["v1", "v2"]


def test_options(mgmt, vdpa):
    assert vdpa("-V") == (0, "vdpa utility, iproute2-6.1.0\n", "")
    assert vdpa("--Version") == (0, "vdpa utility, iproute2-6.1.0\n", "")
    assert vdpa("-h") == (0, "", HELP)
    assert vdpa("--help", "dev") == (0, "", HELP)
    assert vdpa() == (0, "", HELP)
    assert vdpa("help") == (0, "", HELP)
    assert vdpa("-x", "dev") == (1, "", "vdpa: invalid option -- 'x'\nUnknown option.\n" + HELP)
    assert vdpa("-jx") == (1, "", "vdpa: invalid option -- 'x'\nUnknown option.\n" + HELP)
    assert vdpa("-n", "dev") == (1, "", "vdpa: invalid option -- 'n'\nUnknown option.\n" + HELP)
    assert vdpa("-s") == (1, "", "Unknown option.\n" + HELP)  # in getopt's string, handled by nobody
    assert vdpa("--bogus") == (1, "", "vdpa: unrecognized option '--bogus'\nUnknown option.\n" + HELP)
    assert vdpa("--json=1") == (1, "", "vdpa: option '--json' doesn't allow an argument\nUnknown option.\n" + HELP)
    assert vdpa("--file-prefix") == (
        1, "", "vdpa: option '--file-prefix' requires an argument\nUnknown option.\n" + HELP)
    assert vdpa("-V", "-x") == (0, "vdpa utility, iproute2-6.1.0\n", "")  # options act in order
    assert vdpa("--js", "--pre", "mgmtdev", "show", "vdpasim_blk")[1].startswith('{\n    "mgmtdev": {\n')


@pytest.mark.parametrize("args", [["dev", "show"], ["help"], ["mgmtdev", "show"], ["dev", "add", "name", "x"],
                                  ["-j", "dev", "show"], ["foo"]])
def test_no_service_fails_to_connect(runtime, vdpa, args):
    assert vdpa(*args) == (1, "", "Failed to connect to vdpa Netlink\n")


def test_no_service_still_answers_version_help_and_bad_options(runtime, vdpa):
    assert vdpa("-V") == (0, "vdpa utility, iproute2-6.1.0\n", "")
    assert vdpa("-h") == (0, "", HELP)
    assert vdpa("-x")[0] == 1


def test_file_prefix_selects_the_service(runtime, vdpa):
    with VdpaManagement("other") as other:
        other.add_mgmtdev(FakeMgmtdev("only_in_other", supported_classes=2))
        assert vdpa("mgmtdev", "show") == (1, "", "Failed to connect to vdpa Netlink\n")
        expected = "only_in_other: \n  supported_classes net\n  max_supported_vqs 0\n  dev_features\n"
        assert vdpa("--file-prefix", "other", "mgmtdev", "show") == (0, expected, "")
        assert vdpa("mgmtdev", "show", "--file-prefix=other") == (0, expected, "")
        with VdpaManagement() as default:
            assert default.socket_path == str(runtime / "dataplane" / "vdpa.sock")
            assert vdpa("mgmtdev", "show") == (0, "", "")
    assert vdpa("--file-prefix", "a/b", "dev")[0] == 1


def test_posixly_correct_stops_options_at_the_first_word(mgmt, vdpa, monkeypatch):
    monkeypatch.setenv("POSIXLY_CORRECT", "1")
    assert vdpa("-j", "dev", "show") == (0, '{"dev":{}}\n', "")
    assert vdpa("dev", "show", "-j") == (1, "", "Error: vdpa: device not found.\nkernel answers: No such device\n")


def test_dev_new_empty_name(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "", "mgmtdev", "vdpasim_net") == (1, "", EINVAL)
    assert names(mgmt) == []


REAL_VDPA = shutil.which("vdpa") or ("/usr/sbin/vdpa" if os.path.exists("/usr/sbin/vdpa") else None)


@pytest.mark.skipif(REAL_VDPA is None, reason="iproute2's vdpa is not installed")
@pytest.mark.parametrize("args", [
    ["-x"], ["-jx", "dev"], ["-s"], ["--bogus"], ["--json=1"], ["-V", "-x"], ["-h"], ["--help"], ["--Version"],
    ["--version"], ["-n"], ["dev", "show", "-q"], ["-p", "--pretty=no"],
    # past the options: neither has a kernel/service to talk to
    ["--js", "dev"], ["--"], ["-", "dev"], ["help"], ["dev", "add", "name"], ["-j", "mgmtdev", "show"],
])
def test_same_as_iproute2_before_and_without_a_connection(runtime, vdpa, args):
    """Differential: this machine's iproute2 vdpa (no kernel vdpa module here) and ours without a service."""
    real = subprocess.run(["vdpa", *args], executable=REAL_VDPA, capture_output=True, text=True, timeout=30)
    assert vdpa(*args) == (real.returncode, real.stdout, real.stderr)


def test_a_dead_service_socket_fails_to_connect(runtime, vdpa):
    import socket

    d = runtime / "dataplane"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "vdpa.sock"))  # bound, not listening: what a killed service leaves
    s.close()
    assert vdpa("dev", "show") == (1, "", "Failed to connect to vdpa Netlink\n")
