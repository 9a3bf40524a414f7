"""The management service itself: replies as ordered attributes, the socket
(malformed requests, several clients), its lifecycle, and the real command line."""

import errno
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from dataplane.testing.vdpa_mgmt import FakeMgmtdev, FakeSimNetMgmtdev, VDPASIM_BLK_FEATURES
from dataplane.vdpa.mgmt import VdpaAttr, VdpaCmd, VdpaManagement, VdpaMgmtError
from dataplane.vdpa.mgmt.transport import MAX_LINE, MgmtClient

A = VdpaAttr


def raw_request(sock_file, sock, line: bytes) -> dict:
    sock.sendall(line)
    reply = sock_file.readline()
    assert reply.endswith(b"\n")
    return json.loads(reply)


@pytest.fixture
def raw(mgmt):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(mgmt.socket_path)
    f = s.makefile("rb")
    yield lambda line: raw_request(f, s, line)
    f.close()
    s.close()


# ---------------------------------------------------------------------------- replies
def test_replies_carry_the_kernel_attributes_in_order(mgmt):
    r = mgmt.request(VdpaCmd.MGMTDEV_GET, [(A.MGMTDEV_DEV_NAME, "vdpasim_blk")])
    assert r.error == 0 and len(r.messages) == 1
    assert r.messages[0].cmd == VdpaCmd.MGMTDEV_NEW
    assert r.messages[0].attrs == [(A.MGMTDEV_DEV_NAME, "vdpasim_blk"), (A.MGMTDEV_SUPPORTED_CLASSES, 4),
                                   (A.DEV_MGMTDEV_MAX_VQS, 0), (A.DEV_SUPPORTED_FEATURES, 0)]
    assert mgmt.request(VdpaCmd.DEV_NEW, [(A.DEV_NAME, "vdpa0"), (A.MGMTDEV_DEV_NAME, "vdpasim_net")]).error == 0
    r = mgmt.request(VdpaCmd.DEV_GET, [(A.DEV_NAME, "vdpa0")])
    assert r.messages[0].cmd == VdpaCmd.DEV_NEW
    assert r.messages[0].attrs == [(A.MGMTDEV_DEV_NAME, "vdpasim_net"), (A.DEV_NAME, "vdpa0"), (A.DEV_ID, 1),
                                   (A.DEV_VENDOR_ID, 0), (A.DEV_MAX_VQS, 3), (A.DEV_MAX_VQ_SIZE, 256),
                                   (A.DEV_MIN_VQ_SIZE, 1)]
    r = mgmt.request(VdpaCmd.DEV_CONFIG_GET, [(A.DEV_NAME, "vdpa0")])
    assert r.messages[0].attrs == [(A.DEV_NAME, "vdpa0"), (A.DEV_ID, 1), (A.DEV_FEATURES, 0x308830028),
                                   (A.DEV_NET_CFG_MTU, 1500), (A.DEV_NET_CFG_MACADDR, bytes(6)),
                                   (A.DEV_NET_STATUS, 1)]
    mgmt.devices[0].negotiate(0x308830028)
    r = mgmt.request(VdpaCmd.DEV_VSTATS_GET, [(A.DEV_NAME, "vdpa0"), (A.DEV_QUEUE_INDEX, 2)])
    assert r.messages[0].attrs == [(A.DEV_NAME, "vdpa0"), (A.DEV_ID, 1), (A.DEV_NEGOTIATED_FEATURES, 0x308830028),
                                   (A.DEV_QUEUE_INDEX, 2),
                                   (A.DEV_VENDOR_ATTR_NAME, "cvq requests"), (A.DEV_VENDOR_ATTR_VALUE, 0),
                                   (A.DEV_VENDOR_ATTR_NAME, "cvq successes"), (A.DEV_VENDOR_ATTR_VALUE, 0),
                                   (A.DEV_VENDOR_ATTR_NAME, "cvq errors"), (A.DEV_VENDOR_ATTR_VALUE, 0)]


def test_blk_config_attributes(mgmt):
    assert mgmt.request(VdpaCmd.DEV_NEW, [(A.DEV_NAME, "blk0"), (A.MGMTDEV_DEV_NAME, "vdpasim_blk")]).error == 0
    r = mgmt.request(VdpaCmd.DEV_CONFIG_GET, [(A.DEV_NAME, "blk0")])
    assert r.error == 0
    assert r.messages[0].attrs == [
        (A.DEV_NAME, "blk0"), (A.DEV_ID, 2), (A.DEV_FEATURES, VDPASIM_BLK_FEATURES),
        (A.DEV_BLK_CFG_CAPACITY, 0x40000), (A.DEV_BLK_CFG_SEG_SIZE, 4096), (A.DEV_BLK_CFG_BLK_SIZE, 512),
        (A.DEV_BLK_CFG_SEG_MAX, 32), (A.DEV_BLK_CFG_NUM_QUEUES, 1), (A.DEV_BLK_CFG_PHY_BLK_EXP, 0),
        (A.DEV_BLK_CFG_ALIGN_OFFSET, 0), (A.DEV_BLK_CFG_MIN_IO_SIZE, 1), (A.DEV_BLK_CFG_OPT_IO_SIZE, 1),
        (A.DEV_BLK_CFG_MAX_DISCARD_SEC, 0xFFFFFFFF), (A.DEV_BLK_CFG_MAX_DISCARD_SEG, 1),
        (A.DEV_BLK_CFG_DISCARD_SEC_ALIGN, 512), (A.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC, 0xFFFFFFFF),
        (A.DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG, 1), (A.DEV_BLK_CFG_READ_ONLY, 0), (A.DEV_BLK_CFG_FLUSH, 1)]


def test_requests_without_the_needed_attributes(mgmt):
    for cmd in (VdpaCmd.DEV_NEW, VdpaCmd.DEV_DEL, VdpaCmd.DEV_GET, VdpaCmd.DEV_CONFIG_GET, VdpaCmd.DEV_ATTR_SET):
        r = mgmt.request(cmd, [])
        assert (r.error, r.extack, r.messages) == (-errno.EINVAL, None, []), cmd
    r = mgmt.request(VdpaCmd.MGMTDEV_GET, [])
    assert (r.error, r.extack) == (-errno.EINVAL, "vdpa: Fail to find the specified mgmt device")
    assert mgmt.request(VdpaCmd.UNSPEC, []).error == -errno.EOPNOTSUPP
    assert mgmt.request(99, []).error == -errno.EOPNOTSUPP
    # only MGMTDEV_GET, DEV_GET and DEV_CONFIG_GET can dump
    assert mgmt.request(VdpaCmd.DEV_DEL, [(A.DEV_NAME, "x")], dump=True).error == -errno.EOPNOTSUPP
    assert mgmt.request(VdpaCmd.DEV_CONFIG_GET, [], dump=True).error == 0


def test_a_failing_device_does_not_break_the_service(mgmt, vdpa):
    class Broken(FakeMgmtdev):
        def dev_add(self, name, attrs):
            raise RuntimeError("boom")

    class Refusing(FakeMgmtdev):
        def dev_add(self, name, attrs):
            raise VdpaMgmtError(errno.ENOSPC, "mydrv: no room")

    mgmt.add_mgmtdev(Broken("broken", supported_classes=2))
    mgmt.add_mgmtdev(Refusing("refusing", supported_classes=2))
    rc, out, err = vdpa("dev", "add", "name", "x", "mgmtdev", "broken")
    assert rc == 1 and err == "Error: vdpa: internal error: boom.\nkernel answers: Input/output error\n"
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "refusing") == (
        1, "", "Error: mydrv: no room.\nkernel answers: No space left on device\n")
    assert vdpa("dev", "add", "name", "x", "mgmtdev", "vdpasim_net") == (0, "", "")
    with pytest.raises(ValueError):
        mgmt.add_mgmtdev(FakeSimNetMgmtdev())  # one handle, one mgmtdev


# ---------------------------------------------------------------------------- the socket
def test_malformed_requests_get_an_error_and_the_service_goes_on(mgmt, raw):
    bad = [b"not json\n", b"[1,2]\n", b'{"seq": 7, "cmd": "x"}\n', b'{"seq": 8, "cmd": 5, "dump": 1}\n',
           b'{"seq": 9, "cmd": 5, "attrs": [[4, 5]]}\n', b'{"seq": 10, "cmd": 5, "attrs": [[999, "x"]]}\n',
           b'{"seq": 11, "cmd": 3, "attrs": [[10, "zz"]]}\n', b'{"seq": 12, "cmd": 5, "attrs": {"4": "x"}}\n',
           b"\xff\xfe\n", b'{"seq": 13, "cmd": 6, "attrs": [[17, -1]]}\n']
    for line in bad:
        reply = raw(line)
        assert reply["error"] == -errno.EINVAL, line
        assert reply["extack"].startswith("malformed request: "), line
        assert reply["messages"] == []
    assert raw(b'{"seq": 7, "cmd": "x"}\n')["seq"] == 7
    # a MAC of the wrong length passes the JSON shape but not the policy
    assert raw(b'{"seq": 14, "cmd": 3, "attrs": [[4, "v"], [2, "vdpasim_net"], [10, "0011"]]}\n')["error"] == (
        -errno.EINVAL)
    ok = raw(b'{"seq": 15, "cmd": 2, "dump": true}\n')
    assert ok["seq"] == 15 and ok["error"] == 0 and len(ok["messages"]) == 2
    assert ok["messages"][0] == {"cmd": 1, "attrs": [[2, "vdpasim_net"], [3, 2], [15, 3], [16, 0x308830028]]}
    # binary attributes travel as hex
    assert raw(b'{"seq": 16, "cmd": 3, "attrs": [[4, "v"], [2, "vdpasim_net"], [10, "001122334455"]]}\n')[
        "error"] == 0
    cfg = raw(b'{"seq": 17, "cmd": 6, "attrs": [[4, "v"]]}\n')
    assert [10, "001122334455"] in cfg["messages"][0]["attrs"]


def test_the_service_survives_rude_clients(mgmt, vdpa):
    # a client that connects and goes away, one that sends half a line, one that sends too much
    s1 = socket.socket(socket.AF_UNIX)
    s1.connect(mgmt.socket_path)
    s1.close()
    s2 = socket.socket(socket.AF_UNIX)
    s2.connect(mgmt.socket_path)
    s2.sendall(b'{"seq": 1, "cmd": ')
    s3 = socket.socket(socket.AF_UNIX)
    s3.settimeout(10)
    s3.connect(mgmt.socket_path)
    try:
        s3.sendall(b"x" * (MAX_LINE + 10))
    except OSError:  # the server may already have closed its end
        pass
    data = b""
    try:
        while chunk := s3.recv(65536):
            data += chunk
    except OSError:
        pass
    if data:
        assert json.loads(data.splitlines()[0])["error"] == -errno.EMSGSIZE
    s3.close()
    assert vdpa("mgmtdev", "show", "vdpasim_blk")[0] == 0  # still answering, s2 still open
    s2.close()
    assert vdpa("dev", "show") == (0, "", "")


def test_concurrent_clients(mgmt):
    errors = []

    def worker(i):
        try:
            with MgmtClient(mgmt.socket_path) as c:
                for j in range(20):
                    name = f"v{i}-{j}"
                    new = [(A.DEV_NAME, name), (A.MGMTDEV_DEV_NAME, "vdpasim_net")]
                    assert c.request(VdpaCmd.DEV_NEW, new).error == 0
                    assert c.request(VdpaCmd.DEV_GET, [(A.DEV_NAME, name)]).messages[0].get(A.DEV_NAME) == name
                    assert c.request(VdpaCmd.DEV_DEL, [(A.DEV_NAME, name)]).error == 0
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and mgmt.devices == []


# ---------------------------------------------------------------------------- lifecycle
def test_start_stop_and_the_socket_file(runtime):
    m = VdpaManagement("life")
    path = m.socket_path
    assert path == os.path.join(str(runtime), "life", "vdpa.sock")
    assert not os.path.exists(os.path.dirname(path))
    m.start()
    assert os.path.exists(path) and oct(os.stat(path).st_mode & 0o777) == "0o600"
    with pytest.raises(RuntimeError):
        m.start()
    other = VdpaManagement("life")
    with pytest.raises(OSError) as exc:
        other.start()  # a live service owns the socket
    assert exc.value.errno == errno.EADDRINUSE
    assert os.path.exists(path)
    m.stop()
    m.stop()  # idempotent
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))  # it made the directory, it removes it
    assert not any(t.name == "vdpa-mgmt" for t in threading.enumerate())


def test_a_stale_socket_is_replaced_and_an_existing_directory_kept(runtime):
    d = runtime / "dataplane"
    d.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d / "vdpa.sock"))
    stale.close()  # bound, never listening: a dead service's leftover
    with VdpaManagement() as m:
        with MgmtClient(m.socket_path) as c:
            assert c.request(VdpaCmd.MGMTDEV_GET, dump=True).error == 0
    assert not (d / "vdpa.sock").exists()
    assert d.is_dir()  # the EAL's directory stays


def test_socket_path_too_long(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAPLANE_RUNTIME_DIR", str(tmp_path / ("x" * 120)))
    with pytest.raises(OSError) as exc:
        VdpaManagement().start()
    assert exc.value.errno == errno.ENAMETOOLONG


# ---------------------------------------------------------------------------- the real command line
def _cli(args, runtime, **kw):
    import dataplane

    root = os.path.dirname(os.path.dirname(os.path.abspath(dataplane.__file__)))  # this tree, not the install
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(runtime), PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, "-m", "dataplane.cli", "vdpa", *args], capture_output=True, env=env,
                          timeout=120, **kw)


def test_the_dataplane_command(mgmt, runtime):
    from test_vdpa_output import MGMTDEV_JSON, MGMTDEV_TEXT

    r = _cli(["-j", "mgmtdev", "show"], runtime)
    assert (r.returncode, r.stdout, r.stderr) == (0, MGMTDEV_JSON.encode(), b"")
    r = _cli(["mgmtdev", "show"], runtime)
    assert (r.returncode, r.stdout, r.stderr) == (0, MGMTDEV_TEXT.encode(), b"")
    r = _cli(["dev", "add", "name", "vdpa0", "mgmtdev", "vdpasim_net"], runtime)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    r = _cli(["dev", "del", "nosuch"], runtime)
    assert (r.returncode, r.stdout, r.stderr) == (1, b"", b"Error: vdpa: device not found.\n"
                                                         b"kernel answers: No such device\n")
    assert [d.name for d in mgmt.devices] == ["vdpa0"]


def test_the_dataplane_command_without_a_service(runtime):
    r = _cli(["dev", "show"], runtime)
    assert (r.returncode, r.stdout, r.stderr) == (1, b"", b"Failed to connect to vdpa Netlink\n")


def test_cli_main_dispatches(mgmt, capsys):
    from dataplane.cli import main

    assert main(["vdpa", "-V"]) == 0
    assert capsys.readouterr().out == "vdpa utility, iproute2-6.1.0\n"
    assert main(["vdpa", "dev", "show"]) == 0
    assert capsys.readouterr().out == ""


def test_a_device_made_by_dev_add_is_managed_whatever_it_says(mgmt, vdpa):
    class Forgetful(FakeMgmtdev):
        def dev_add(self, name, attrs):
            from dataplane.testing.vdpa_mgmt import FakeNetDevice

            return FakeNetDevice(name, None, attrs, user_created=False)  # no mgmtdev, not "user created"

    forgetful = Forgetful("forgetful", bus="pci", supported_classes=2)
    mgmt.add_mgmtdev(forgetful)
    assert vdpa("dev", "add", "name", "f0", "mgmtdev", "pci/forgetful") == (0, "", "")
    assert vdpa("dev", "show") == (
        0, "f0: type network mgmtdev pci/forgetful vendor_id 0 max_vqs 3 max_vq_size 256\n", "")
    dev = mgmt.devices[0]
    mgmt.remove_mgmtdev(forgetful)
    assert dev.deleted and mgmt.devices == []
