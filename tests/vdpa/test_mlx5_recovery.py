"""mlx5 virtq error recovery (facts §3.10): ignore rules, recover, give up after 3 errors in 3 s."""

import structlog

from dataplane.testing.clock import ManualClock
from dataplane.vdpa.mlx5.recovery import GIVE_UP, IGNORE, RECOVER, RecoveryPolicy, make_cookie, split_cookie


def policy(start=100.0, n=4):
    clock = ManualClock(start)
    return RecoveryPolicy("0000:00:06.1", n, clock=clock), clock


def events(p, cookie):
    with structlog.testing.capture_logs() as logs:
        d = p.on_error(cookie)
    return d, [(e["log_level"], e["event"]) for e in logs]


def test_cookie():
    assert make_cookie(3, 5) == 3 << 32 | 5 and split_cookie(make_cookie(7, 2)) == (7, 2)


def test_first_errors_recover_with_the_retry_count():
    p, clock = policy()
    c = p.subscribe(1)
    assert events(p, c) == (RECOVER, [("warning", "Recover virtq 1: 1.")])
    clock.advance(10)
    assert events(p, c) == (RECOVER, [("warning", "Recover virtq 1: 2.")])


def test_three_errors_within_3s_give_up():
    p, clock = policy()
    c = p.subscribe(0)
    assert p.on_error(c) == RECOVER
    clock.advance(1)
    assert p.on_error(c) == RECOVER  # the oldest of the last 3 is still boot (0)
    clock.advance(1)
    assert p.on_error(c) == RECOVER
    clock.advance(1)  # the oldest of the last 3 errors (t=100) is 3 s ago: not more than 3
    assert events(p, c) == (GIVE_UP, [("error", "Device 0000:00:06.1 virtq 0 failed to recover.")])
    assert not p.virtqs[0].enabled
    assert p.on_error(c) == IGNORE  # the queue stays disabled


def test_whole_seconds_as_dpdk_counts_them():
    p, clock = policy()
    c = p.subscribe(0)
    for _ in range(3):
        p.on_error(c)
    clock.advance(3.9)  # int(3.9) == 3: not > 3
    assert p.on_error(c) == GIVE_UP
    p, clock = policy()
    c = p.subscribe(0)
    for _ in range(3):
        p.on_error(c)
    clock.advance(4.0)
    assert p.on_error(c) == RECOVER


def test_spread_errors_keep_recovering():
    p, clock = policy()
    c = p.subscribe(2)
    for _ in range(10):
        assert p.on_error(c) == RECOVER
        clock.advance(1.5)  # 3 errors span 3 s, the oldest of the last 3 is 4.5 s back when the next comes
    assert p.virtqs[2].n_retry == 10


def test_ignored_events():
    p, clock = policy()
    c = p.subscribe(0)
    assert p.on_error(make_cookie(0, 0)) == IGNORE  # stale version
    c2 = p.subscribe(0)
    assert p.on_error(c) == IGNORE and p.on_error(c2) == RECOVER
    assert p.on_error(make_cookie(1, 3)) == IGNORE  # queue 3 never enabled
    d, logs = events(p, make_cookie(1, 9))
    assert d == IGNORE and logs == [("error", "Invalid device 0000:00:06.1 error event virtq 9.")]
    p.disable(0)
    assert p.on_error(c2) == IGNORE


def test_first_3s_after_boot_are_ignored_and_not_counted():
    p, clock = policy(start=0.0)
    c = p.subscribe(0)
    assert p.on_error(c) == IGNORE
    clock.advance(2.99)
    assert p.on_error(c) == IGNORE
    assert p.virtqs[0].err_time == [0.0, 0.0, 0.0]
    clock.advance(0.01)
    assert p.on_error(c) == GIVE_UP  # t=3: int(3 - 0) is not > 3
