"""dataplane-nic start / show / stop leave no files and no processes."""

import json
import os
import subprocess
import sys

from dataplane.testing.nic_card import PF, ROOT, CardProc


def _run(runtime, *args, timeout=180):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=runtime, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "dataplane.nic", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_cli_daemon_show_stop(runtime):
    r = _run(runtime, "start", "ifcvf", "--pf", PF, "--vfs", "3", "--mac-base", "02:11:22:33:44:00", "--daemon")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ready ")
    card_dir = r.stdout.split()[1]
    pid = int(open(os.path.join(card_dir, "pid")).read())
    try:
        assert _alive(pid)
        r = _run(runtime, "show", "-j")
        assert r.returncode == 0, r.stderr
        [card] = json.loads(r.stdout)["cards"]
        assert card["pf"] == PF and card["running"] and card["pid"] == pid
        assert [v["bdf"] for v in card["vfs"]] == ["0000:00:05.1", "0000:00:05.2", "0000:00:05.3"]
        assert [v["mac"] for v in card["vfs"]] == ["02:11:22:33:44:00", "02:11:22:33:44:01", "02:11:22:33:44:02"]
        assert all(v["status"] == 0 and v["num_queues"] == 9 and not v["driver"] for v in card["vfs"])
        r = _run(runtime, "show")
        assert "0000:00:05.2 mac 02:11:22:33:44:01 status 0x00 (RESET) no driver queues 9" in r.stdout
        # a second card on the same PF is refused
        r = _run(runtime, "start", "ifcvf", "--pf", PF, "--vfs", "1")
        assert r.returncode == 1 and "is running" in r.stderr
    finally:
        r = _run(runtime, "stop", PF)
    assert r.returncode == 0, r.stderr
    assert not _alive(pid)
    assert os.listdir(runtime) == []
    r = _run(runtime, "stop", PF)
    assert r.returncode == 1 and "no card" in r.stderr


def test_cli_foreground_stop_and_stale_cleanup(runtime):
    card = CardProc(runtime, vfs=1, extra=("--file-prefix", "p1"))
    try:
        assert card.dir == os.path.join(runtime, "p1", f"nic-{PF}")
        r = _run(runtime, "stop", PF, "--file-prefix", "p1")
        assert r.returncode == 0, r.stderr
        card.proc.wait(20)
        assert card.proc.returncode == 0
        assert not os.path.exists(card.dir)
    finally:
        card.stop()
    # a card killed with SIGKILL leaves its directory; stop cleans it
    card = CardProc(runtime, vfs=1)
    try:
        card.proc.kill()
        card.proc.wait(20)
        assert os.path.isdir(card.dir)
        r = _run(runtime, "show")
        assert "not running" in r.stdout
        r = _run(runtime, "stop", PF)
        assert r.returncode == 0
        assert not os.path.exists(card.dir)
    finally:
        card.stop()
