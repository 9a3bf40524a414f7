"""``vdpa`` output, byte for byte against the literal examples (VDPA-FACTS §5.3-5.6)."""

import json

import pytest

from dataplane.testing.vdpa_mgmt import FakeMgmtdev, FakeNetDevice
from dataplane.vdpa.mgmt import VdpaAttr

# ---------------------------------------------------------------------------- literals (facts §5.3-5.6)
MGMTDEV_TEXT = (
    "vdpasim_net: \n"
    "  supported_classes net\n"
    "  max_supported_vqs 3\n"
    "  dev_features MTU MAC STATUS CTRL_VQ CTRL_MAC_ADDR ANY_LAYOUT VERSION_1 ACCESS_PLATFORM\n"
    "vdpasim_blk: \n"
    "  supported_classes block\n"
    "  max_supported_vqs 0\n"
    "  dev_features\n"
)
MGMTDEV_JSON = (
    '{"mgmtdev":{"vdpasim_net":{"supported_classes":["net"],"max_supported_vqs":3,"dev_features":["MTU","MAC",'
    '"STATUS","CTRL_VQ","CTRL_MAC_ADDR","ANY_LAYOUT","VERSION_1","ACCESS_PLATFORM"]},"vdpasim_blk":{"supported_classes":'
    '["block"],"max_supported_vqs":0,"dev_features":[]}}}\n'
)
MLX5_SF_PRETTY = """{
    "mgmtdev": {
        "auxiliary/mlx5_core.sf.1": {
            "supported_classes": [ "net" ],
            "max_supported_vqs": 257,
            "dev_features": [ "CSUM","GUEST_CSUM","MTU","HOST_TSO4","HOST_TSO6","STATUS","CTRL_VQ","MQ","CTRL_MAC_ADDR","VERSION_1","ACCESS_PLATFORM" ]
        }
    }
}
"""
DEV_TEXT = (
    "vdpa0: type network mgmtdev vdpasim_net vendor_id 0 max_vqs 3 max_vq_size 256\n"
    "blk0: type block mgmtdev vdpasim_blk vendor_id 0 max_vqs 1 max_vq_size 256\n"
)
DEV_JSON = '{"dev":{"vdpa0":{"type":"network","mgmtdev":"vdpasim_net","vendor_id":0,"max_vqs":3,"max_vq_size":256}}}\n'
CONFIG_VDPA0 = "vdpa0: mac 00:11:22:33:44:55 link up link_announce false mtu 9000 \n"
MLX5_FEATURES = ["CSUM", "GUEST_CSUM", "MTU", "MAC", "HOST_TSO4", "HOST_TSO6", "STATUS", "CTRL_VQ", "MQ",
                 "CTRL_MAC_ADDR", "VERSION_1", "ACCESS_PLATFORM"]
CONFIG_VDPA_A = (
    "vdpa-a: mac 00:00:00:00:88:88 link up link_announce false max_vq_pairs 2 mtu 9000 \n"
    "  negotiated_features " + " ".join(MLX5_FEATURES) + "\n"
)
CONFIG_VDPA_A_JSON = (
    '{"config":{"vdpa-a":{"mac":"00:00:00:00:88:88","link ":"up","link_announce ":false,"max_vq_pairs":2,"mtu":9000,'
    '"negotiated_features":[' + ",".join(f'"{n}"' for n in MLX5_FEATURES) + "]}}}\n"
)
VSTATS_SIM_TX = "vdpa0: queue_type tx tx packets 5 tx bytes 490 tx errors 0 tx drops 0 \n"
VSTATS_MLX5_TX = "vdpa-a: queue_type tx received_desc 321812 completed_desc 321812 \n"
VSTATS_MLX5_RX_JSON = '{"vstats":{"vdpa-a":{"queue_type":"rx","received_desc":114855,"completed_desc":114617}}}\n'


def bit(*bits):
    v = 0
    for b in bits:
        v |= 1 << b
    return v


# CSUM GUEST_CSUM MTU MAC HOST_TSO4 HOST_TSO6 STATUS CTRL_VQ MQ CTRL_MAC_ADDR VERSION_1 ACCESS_PLATFORM
MLX5_DEV_FEATURES = bit(0, 1, 3, 5, 11, 12, 16, 17, 22, 23, 32, 33)


class Mlx5LikeNetDevice(FakeNetDevice):
    """A device with mlx5_vnet's shape: MQ, and received/completed descriptor stats."""

    features = MLX5_DEV_FEATURES
    nvqs = 5

    def __init__(self, name, mgmtdev, attrs=None, **kw):
        super().__init__(name, mgmtdev, attrs, **kw)
        self.desc = {0: (114855, 114617), 1: (321812, 321812)}

    def vendor_stats(self, qidx):
        received, completed = self.desc.get(qidx, (0, 0))
        return [("received_desc", received), ("completed_desc", completed)]


def mlx5_sf_mgmtdev(features=MLX5_DEV_FEATURES & ~bit(5)):
    """The upstream mlx5 SF example (its dev_features list has no MAC)."""
    return FakeMgmtdev(
        "mlx5_core.sf.1",
        bus="auxiliary",
        supported_classes=bit(1),
        max_supported_vqs=257,
        supported_features=features,
        config_attr_mask=(1 << VdpaAttr.DEV_NET_CFG_MACADDR) | (1 << VdpaAttr.DEV_NET_CFG_MTU)
        | (1 << VdpaAttr.DEV_NET_CFG_MAX_VQP) | (1 << VdpaAttr.DEV_FEATURES),
        device_cls=Mlx5LikeNetDevice,
    )


def add_sim_devices(vdpa):
    assert vdpa("dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net", "mac", "00:11:22:33:44:55",
                "mtu", "9000") == (0, "", "")
    assert vdpa("dev", "add", "name", "blk0", "mgmtdev", "vdpasim_blk") == (0, "", "")


# ---------------------------------------------------------------------------- mgmtdev show
def test_mgmtdev_show_text(mgmt, vdpa):
    assert vdpa("mgmtdev", "show") == (0, MGMTDEV_TEXT, "")
    assert vdpa("mgmtdev", "list") == (0, MGMTDEV_TEXT, "")
    assert vdpa("mgmtdev", "show", "vdpasim_blk") == (0, MGMTDEV_TEXT[MGMTDEV_TEXT.index("vdpasim_blk: "):], "")
    assert vdpa("mgmtdev", "show", "nosuch") == (
        1, "", "Error: vdpa: Fail to find the specified mgmt device.\nkernel answers: No such device\n")


def test_mgmtdev_show_json(mgmt, vdpa):
    assert vdpa("-j", "mgmtdev", "show") == (0, MGMTDEV_JSON, "")
    assert vdpa("--json", "mgmtdev", "show") == (0, MGMTDEV_JSON, "")


def test_mgmtdev_show_pretty_matches_the_upstream_mlx5_example(runtime, vdpa):
    from dataplane.vdpa.mgmt import VdpaManagement

    with VdpaManagement() as m:
        m.add_mgmtdev(mlx5_sf_mgmtdev())
        assert vdpa("-jp", "mgmtdev", "show") == (0, MLX5_SF_PRETTY, "")
        assert vdpa("-j", "-p", "mgmtdev", "show", "auxiliary/mlx5_core.sf.1") == (0, MLX5_SF_PRETTY, "")
        parsed = json.loads(MLX5_SF_PRETTY)
        assert parsed["mgmtdev"]["auxiliary/mlx5_core.sf.1"]["max_supported_vqs"] == 257


def test_mgmtdev_pretty_has_empty_arrays_as_bracket_space_bracket(mgmt, vdpa):
    rc, out, err = vdpa("-jp", "mgmtdev", "show", "vdpasim_blk")
    assert rc == 0 and err == ""
    assert out == (
        "{\n"
        '    "mgmtdev": {\n'
        '        "vdpasim_blk": {\n'
        '            "supported_classes": [ "block" ],\n'
        '            "max_supported_vqs": 0,\n'
        '            "dev_features": [ ]\n'
        "        }\n"
        "    }\n"
        "}\n"
    )
    assert json.loads(out) == {"mgmtdev": {"vdpasim_blk": {"supported_classes": ["block"], "max_supported_vqs": 0,
                                                           "dev_features": []}}}


def test_unnamed_feature_bits_and_unknown_classes(runtime, vdpa):
    from dataplane.vdpa.mgmt import VdpaManagement

    odd = FakeMgmtdev("odd", bus="pci", supported_classes=bit(2, 5), supported_features=bit(0, 4, 30, 32, 39, 57))
    net = FakeMgmtdev("oddnet", supported_classes=bit(1), supported_features=bit(0, 4, 30, 32, 39, 57))
    with VdpaManagement() as m:
        m.add_mgmtdev(odd)
        m.add_mgmtdev(net)
        assert vdpa("mgmtdev", "show") == (0, (
            "pci/odd: \n"
            "  supported_classes block < unknown class >\n"
            "  max_supported_vqs 0\n"
            "  dev_features bit_0 bit_4 bit_30 VERSION_1 bit_39 bit_57\n"  # no table without the net class
            "oddnet: \n"
            "  supported_classes net\n"
            "  max_supported_vqs 0\n"
            "  dev_features CSUM bit_4 bit_30 VERSION_1 bit_39 HASH_REPORT\n"
        ), "")
        rc, out, _ = vdpa("-j", "mgmtdev", "show", "oddnet")
        assert out == ('{"mgmtdev":{"oddnet":{"supported_classes":["net"],"max_supported_vqs":0,'
                       '"dev_features":["CSUM",4,30,"VERSION_1",39,"HASH_REPORT"]}}}\n')


# ---------------------------------------------------------------------------- dev show
def test_dev_show_text_and_json(mgmt, vdpa):
    add_sim_devices(vdpa)
    assert vdpa("dev", "show") == (0, DEV_TEXT, "")
    assert vdpa("dev") == (0, DEV_TEXT, "")
    assert vdpa("dev", "list") == (0, DEV_TEXT, "")
    assert vdpa("dev", "show", "blk0") == (0, DEV_TEXT.splitlines(True)[1], "")
    assert vdpa("-j", "dev", "show", "vdpa0") == (0, DEV_JSON, "")
    rc, out, _ = vdpa("-j", "dev", "show")
    assert json.loads(out)["dev"]["blk0"] == {"type": "block", "mgmtdev": "vdpasim_blk", "vendor_id": 0,
                                              "max_vqs": 1, "max_vq_size": 256}


def test_dev_show_with_a_bus_mgmtdev(runtime, vdpa):
    from dataplane.vdpa.mgmt import VdpaManagement

    with VdpaManagement() as m:
        m.add_mgmtdev(mlx5_sf_mgmtdev())
        assert vdpa("dev", "add", "name", "vdpa-a", "mgmtdev", "auxiliary/mlx5_core.sf.1")[0] == 0
        assert vdpa("dev", "show") == (
            0, "vdpa-a: type network mgmtdev auxiliary/mlx5_core.sf.1 vendor_id 0 max_vqs 5 max_vq_size 256\n", "")


# ---------------------------------------------------------------------------- dev config show
def test_config_show_net_without_negotiated_features(mgmt, vdpa):
    add_sim_devices(vdpa)
    assert vdpa("dev", "config", "show", "vdpa0") == (0, CONFIG_VDPA0, "")
    assert vdpa("dev", "config", "vdpa0") == (1, "", 'Command "vdpa0" not found\n')
    assert vdpa("dev", "config", "show") == (0, CONFIG_VDPA0 + "blk0: \n", "")
    assert vdpa("dev", "config") == (0, CONFIG_VDPA0 + "blk0: \n", "")
    assert vdpa("-j", "dev", "config", "show", "vdpa0") == (
        0, '{"config":{"vdpa0":{"mac":"00:11:22:33:44:55","link ":"up","link_announce ":false,"mtu":9000}}}\n', "")


def test_config_show_net_default_mac_and_mtu(mgmt, vdpa):
    assert vdpa("dev", "add", "name", "vdpa1", "mgmtdev", "vdpasim_net")[0] == 0
    assert vdpa("dev", "config", "show", "vdpa1") == (
        0, "vdpa1: mac 00:00:00:00:00:00 link up link_announce false mtu 1500 \n", "")


def test_config_show_net_with_negotiated_features(mgmt, vdpa):
    add_sim_devices(vdpa)
    dev = next(d for d in mgmt.devices if d.name == "vdpa0")
    dev.negotiate(dev.device_features)
    assert vdpa("dev", "config", "show", "vdpa0") == (0, CONFIG_VDPA0 + (
        "  negotiated_features MTU MAC STATUS CTRL_VQ CTRL_MAC_ADDR ANY_LAYOUT VERSION_1 ACCESS_PLATFORM\n"), "")


def test_config_show_mq_device_matches_the_upstream_example(runtime, vdpa):
    from dataplane.vdpa.mgmt import VdpaManagement

    with VdpaManagement() as m:
        m.add_mgmtdev(mlx5_sf_mgmtdev())
        assert vdpa("dev", "add", "name", "vdpa-a", "mgmtdev", "auxiliary/mlx5_core.sf.1", "mac", "00:00:00:00:88:88",
                    "mtu", "9000", "max_vqp", "2") == (0, "", "")
        m.devices[0].negotiate(MLX5_DEV_FEATURES)
        assert vdpa("dev", "config", "show", "vdpa-a") == (0, CONFIG_VDPA_A, "")
        assert vdpa("-j", "dev", "config", "show", "vdpa-a") == (0, CONFIG_VDPA_A_JSON, "")
        rc, out, _ = vdpa("-jp", "dev", "config", "show", "vdpa-a")
        assert rc == 0
        assert '            "link ": "up",\n            "link_announce ": false,\n' in out
        assert '"negotiated_features": [ "CSUM","GUEST_CSUM",' in out and '"ACCESS_PLATFORM" ]\n' in out
        parsed = json.loads(out)["config"]["vdpa-a"]
        assert set(parsed) == {"mac", "link ", "link_announce ", "max_vq_pairs", "mtu", "negotiated_features"}
        assert parsed["negotiated_features"] == MLX5_FEATURES and parsed["max_vq_pairs"] == 2


def test_config_show_blk_prints_only_the_handle(mgmt, vdpa):
    add_sim_devices(vdpa)
    assert vdpa("dev", "config", "show", "blk0") == (0, "blk0: \n", "")
    assert vdpa("-j", "dev", "config", "show", "blk0") == (0, '{"config":{"blk0":{}}}\n', "")
    assert vdpa("-jp", "dev", "config", "show", "blk0") == (0, '{\n    "config": {\n        "blk0": {}\n    }\n}\n', "")


# ---------------------------------------------------------------------------- vstats
def test_vstats_text_and_the_control_vq_quirk(mgmt, vdpa):
    add_sim_devices(vdpa)
    dev = next(d for d in mgmt.devices if d.name == "vdpa0")
    dev.negotiate(dev.device_features)
    dev.counters[1].update({"tx packets": 5, "tx bytes": 490})
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "1") == (0, VSTATS_SIM_TX, "")
    # no MQ: max_vqp is 0, so qidx 0 is labelled control_vq and the real cvq (2) rx
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "0") == (
        0, "vdpa0: queue_type control_vq rx packets 0 rx bytes 0 rx errors 0 rx overruns 0 rx drops 0 \n", "")
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "2") == (
        0, "vdpa0: queue_type rx cvq requests 0 cvq successes 0 cvq errors 0 \n", "")
    assert vdpa("-j", "dev", "vstats", "show", "vdpa0", "qidx", "1") == (
        0, '{"vstats":{"vdpa0":{"queue_type":"tx","tx packets":5,"tx bytes":490,"tx errors":0,"tx drops":0}}}\n', "")
    rc, out, _ = vdpa("-jp", "dev", "vstats", "show", "vdpa0", "qidx", "0")
    assert json.loads(out) == {"vstats": {"vdpa0": {"queue_type": "control_vq", "rx packets": 0, "rx bytes": 0,
                                                    "rx errors": 0, "rx overruns": 0, "rx drops": 0}}}


def test_vstats_mq_device_matches_the_upstream_examples(runtime, vdpa):
    from dataplane.vdpa.mgmt import VdpaManagement

    with VdpaManagement() as m:
        m.add_mgmtdev(mlx5_sf_mgmtdev())
        assert vdpa("dev", "add", "name", "vdpa-a", "mgmtdev", "auxiliary/mlx5_core.sf.1", "max_vqp", "2")[0] == 0
        m.devices[0].negotiate(MLX5_DEV_FEATURES)
        assert vdpa("dev", "vstats", "show", "vdpa-a", "qidx", "1") == (0, VSTATS_MLX5_TX, "")
        assert vdpa("-j", "dev", "vstats", "show", "vdpa-a", "qidx", "0") == (0, VSTATS_MLX5_RX_JSON, "")
        # with MQ, the control queue is the one at 2 * max_vqp
        assert vdpa("dev", "vstats", "show", "vdpa-a", "qidx", "4")[1].startswith("vdpa-a: queue_type control_vq ")
        assert vdpa("dev", "vstats", "show", "vdpa-a", "qidx", "2")[1].startswith("vdpa-a: queue_type rx ")


def test_vstats_errors(mgmt, vdpa):
    add_sim_devices(vdpa)
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "1") == (
        1, "", "Error: vdpa: feature negotiation not complete.\nkernel answers: Resource temporarily unavailable\n")
    assert vdpa("-j", "dev", "vstats", "show", "vdpa0", "qidx", "1")[:2] == (1, '{"vstats":{}}\n')
    mgmt.devices[0].negotiate(mgmt.devices[0].device_features)
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "3") == (1, "", "kernel answers: Invalid argument\n")
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx", "32769") == (
        1, "", "Error: vdpa: queue index exceeds max value.\nkernel answers: Numerical result out of range\n")
    assert vdpa("dev", "vstats", "show", "blk0", "qidx", "0") == (1, "", "kernel answers: Operation not supported\n")
    assert vdpa("dev", "vstats", "show", "nosuch", "qidx", "0") == (
        1, "", "Error: vdpa: device not found.\nkernel answers: No such device\n")
    # without qidx the request lacks QUEUE_INDEX: the kernel refuses it without a message
    assert vdpa("dev", "vstats", "show", "vdpa0") == (1, "", "kernel answers: Invalid argument\n")
    usage = "Usage: vdpa dev vstats show DEV [qidx QUEUE_INDEX]\n"
    assert vdpa("dev", "vstats", "show", "vdpa0", "qidx") == (1, "", usage)
    assert vdpa("dev", "vstats", "show") == (1, "", usage)
    assert vdpa("dev", "vstats") == (1, "", usage)
    assert vdpa("dev", "vstats", "help") == (0, "", usage)
    assert vdpa("dev", "vstats", "sh", "vdpa0", "qidx", "1") == (1, "", 'Command "sh" not found\n')


# ---------------------------------------------------------------------------- JSON framing
def test_json_output_ends_with_a_newline_even_without_a_section(mgmt, vdpa):
    assert vdpa("-j", "dev", "help")[1] == "\n"
    assert vdpa("-j", "dev", "add", "name", "x")[:2] == (1, "\n")
    assert vdpa("-j", "dev", "show", "nosuch") == (
        1, '{"dev":{}}\n', "Error: vdpa: device not found.\nkernel answers: No such device\n")
    assert vdpa("-jp", "dev", "show", "nosuch")[1] == '{\n    "dev": {}\n}\n'
    assert vdpa("-j", "dev", "show") == (0, '{"dev":{}}\n', "")


def test_options_after_the_command_are_options(mgmt, vdpa):
    """GNU getopt permutes: ``vdpa mgmtdev show -j`` is JSON."""
    assert vdpa("mgmtdev", "show", "-j") == (0, MGMTDEV_JSON, "")
    assert vdpa("mgmtdev", "-j", "show") == (0, MGMTDEV_JSON, "")
    # after "--" nothing is an option
    assert vdpa("--", "mgmtdev", "show", "-j") == (
        1, "", "Error: vdpa: Fail to find the specified mgmt device.\nkernel answers: No such device\n")


@pytest.mark.parametrize("pretty", [False, True])
def test_json_parses_and_has_iproute2_keys(mgmt, vdpa, pretty):
    add_sim_devices(vdpa)
    opts = ["-jp"] if pretty else ["-j"]
    assert json.loads(vdpa(*opts, "mgmtdev", "show")[1])["mgmtdev"]["vdpasim_net"]["supported_classes"] == ["net"]
    assert set(json.loads(vdpa(*opts, "dev", "show")[1])["dev"]) == {"vdpa0", "blk0"}
    cfg = json.loads(vdpa(*opts, "dev", "config", "show")[1])["config"]
    assert cfg["vdpa0"] == {"mac": "00:11:22:33:44:55", "link ": "up", "link_announce ": False, "mtu": 9000}
    assert cfg["blk0"] == {}


def test_pretty_dump_of_several_devices(mgmt, vdpa):
    add_sim_devices(vdpa)
    assert vdpa("-jp", "dev", "show") == (0, (
        "{\n"
        '    "dev": {\n'
        '        "vdpa0": {\n'
        '            "type": "network",\n'
        '            "mgmtdev": "vdpasim_net",\n'
        '            "vendor_id": 0,\n'
        '            "max_vqs": 3,\n'
        '            "max_vq_size": 256\n'
        "        },\n"
        '        "blk0": {\n'
        '            "type": "block",\n'
        '            "mgmtdev": "vdpasim_blk",\n'
        '            "vendor_id": 0,\n'
        '            "max_vqs": 1,\n'
        '            "max_vq_size": 256\n'
        "        }\n"
        "    }\n"
        "}\n"), "")
    assert vdpa("-p", "dev", "show") == (0, DEV_TEXT, "")  # -p alone: text
