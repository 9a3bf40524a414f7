"""The guest harness itself: a Debian kernel boots our initramfs, runs a script and reports one line."""

import pytest

from dataplane.testing.linux_guest import Guest, GuestError


def test_guest_boots_runs_its_script_and_reports_pass(image):
    script = """
        [ "$(uname -r)" = "$version" ] || fail "kernel $(uname -r)"
        [ "$who" = "two words" ] || fail "params: who=$who"
        result who_len=${#who} cwd=$(pwd)
    """
    with Guest(image, script, params={"version": image.version, "who": "two words"}) as g:
        r = g.wait()
    assert r.passed, r.console[-3000:]
    assert r.values == {"who_len": "9", "cwd": "/tmp"}
    assert [line for line in r.console.splitlines() if line.startswith(("PASS", "FAIL"))] == [r.line]


def test_guest_reports_fail_with_its_reason(image):
    with Guest(image, 'lsmod | grep -q "^virtio_net " || fail "no virtio_net"; fail "on purpose"') as g:
        r = g.wait()
    assert not r.passed and r.line == "FAIL on purpose", r.console[-3000:]


def test_failing_command_fails_the_script(image):
    with Guest(image, "false; result never=1") as g:
        r = g.wait()
    assert r.line == "FAIL exit 1", r.console[-3000:]


def test_qemu_that_cannot_start_is_reported(image):
    g = Guest(image, "true", extra=["-no-such-option"])
    with g, pytest.raises(GuestError, match="without a result"):
        g.wait()
