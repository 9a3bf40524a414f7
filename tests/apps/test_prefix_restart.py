"""Restarting with the same file prefix right after the previous instance exited.

An instance ends by ``quit``, SIGTERM or SIGINT while its lcore worker forwards;
the next one, same ``--file-prefix``, starts as soon as the old process is gone:
never "file prefix ... is in use", and never waiting for it (no lock outlives it).
"""

import os
import signal
import subprocess
import sys
import time

import pytest

CPUS = sorted(os.sched_getaffinity(0))
ROUNDS = 10
PROMPT = "testpmd> "
WAITING = "waiting for the previous owner of the file prefix to exit"


def _start(prefix, env):
    return subprocess.Popen(
        [sys.executable, "-m", "dataplane.cli", "-l", f"{CPUS[0]}-{CPUS[1]}", "--no-huge", "-m", "64",
         "--file-prefix", prefix, "--vdev", "net_ring0", "--", "-i", "--auto-start"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )


def _wait_prompt(proc, timeout):
    """Read until the shell's prompt; returns what was read."""
    out = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    while PROMPT.encode() not in out:
        assert time.monotonic() < deadline, f"no prompt within {timeout} s:\n{out.decode(errors='replace')}"
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            raise AssertionError(f"exited ({proc.wait()}) before its prompt:\n{out.decode(errors='replace')}")
        if chunk:
            out += chunk
        else:
            time.sleep(0.02)
    return out.decode(errors="replace")


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two cpus (an lcore worker)")
@pytest.mark.timeout(1800)  # the first start may compile the forwarding loop for minutes
@pytest.mark.parametrize("how", ["quit", "SIGTERM", "SIGINT"])
def test_restart_with_same_prefix_at_once(tmp_path, how):
    env = dict(os.environ, DATAPLANE_RUNTIME_DIR=str(tmp_path))
    prefix = f"rs{how.lower()}"
    for round_ in range(ROUNDS):
        proc = _start(prefix, env)
        try:
            # the first start may compile the forwarding loop
            text = _wait_prompt(proc, 900 if round_ == 0 else 120)
            assert "packet forwarding - ports=1" in text, text  # the worker lcore forwards
            if how == "quit":
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            else:
                proc.send_signal(getattr(signal, how))
            proc.wait(60)
            rest = proc.stdout.read().decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdin.close()
            proc.stdout.close()
        out = text + rest
        assert "is in use" not in out, f"round {round_}:\n{out}"
        assert WAITING not in out, f"round {round_}: the previous instance's lock outlived it:\n{out}"
        if how == "quit":
            assert proc.returncode == 0 and "Bye..." in out, out
    assert not os.path.exists(tmp_path / prefix)
