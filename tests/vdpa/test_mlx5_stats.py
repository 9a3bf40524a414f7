"""mlx5 vDPA stats (facts §3.9): the exact names, snapshot/reset and the error codes."""

import errno

import pytest

from dataplane.vdpa.device import RTE_VDPA_STATS_NAME_SIZE, VdpaError
from dataplane.vdpa.mlx5.stats import COUNTER_FIELDS, STATS_NAMES, Mlx5VdpaStats


def raw(*vals):
    return dict(zip(COUNTER_FIELDS, vals))


def test_names_exact_strings():
    assert STATS_NAMES == ("received_descriptors", "completed_descriptors", "bad descriptor errors",
                           "exceed max chain", "invalid buffer", "completion errors")
    assert all(len(n.encode()) < RTE_VDPA_STATS_NAME_SIZE for n in STATS_NAMES)
    s = Mlx5VdpaStats("d", 4, True)
    assert s.names() == list(STATS_NAMES) and s.names(2) == list(STATS_NAMES[:2]) and s.names(99) == list(STATS_NAMES)


def test_values_since_reset():
    s = Mlx5VdpaStats("d", 4, True)
    s.counters_created(1)
    assert s.get(1, raw(10, 9, 1, 0, 2, 0)) == [(0, 10), (1, 9), (2, 1), (3, 0), (4, 2), (5, 0)]
    assert s.reset(1, raw(10, 9, 1, 0, 2, 0)) == 0
    assert s.get(1, raw(15, 12, 1, 3, 2, 1)) == [(0, 5), (1, 3), (2, 0), (3, 3), (4, 0), (5, 1)]
    assert s.get(1, (15, 12, 1, 3, 2, 1), n=3) == [(0, 5), (1, 3), (2, 0)]
    assert s.get(1, raw(15, 12, 1, 3, 2, 1), n=0) == []


def test_wraps_like_the_c_fields():
    s = Mlx5VdpaStats("d", 2, True)
    s.counters_created(0)
    s.reset(0, raw(2**64 - 1, 0, 2**32 - 1, 0, 0, 0))
    assert s.get(0, raw(1, 0, 1, 0, 0, 0))[:3] == [(0, 2), (1, 0), (2, 2)]


def test_counters_persist_across_reconfiguration():
    s = Mlx5VdpaStats("d", 2, True)
    s.counters_created(0)
    s.reset(0, raw(5, 5, 0, 0, 0, 0))
    s.counters_created(0)  # set up again after a dev_close / dev_conf: the snapshot is kept
    assert s.get(0, raw(7, 6, 0, 0, 0, 0))[:2] == [(0, 2), (1, 1)]


def test_errors():
    s = Mlx5VdpaStats("0000:00:06.1", 4, True)
    with pytest.raises(VdpaError) as e:
        s.get(4, raw(0, 0, 0, 0, 0, 0))
    assert e.value.errno == errno.E2BIG
    with pytest.raises(VdpaError, match="virtq is invalid") as e:
        s.get(0, raw(0, 0, 0, 0, 0, 0))
    assert e.value.errno == errno.EINVAL
    assert s.reset(0, raw(0, 0, 0, 0, 0, 0)) == 0  # no counters object: nothing, success
    with pytest.raises(VdpaError) as e:
        s.reset(9, raw(0, 0, 0, 0, 0, 0))
    assert e.value.errno == errno.E2BIG
    n = Mlx5VdpaStats("0000:00:06.1", 4, False)
    for call in (lambda: n.get(0, raw(0, 0, 0, 0, 0, 0)), lambda: n.reset(0, raw(0, 0, 0, 0, 0, 0))):
        with pytest.raises(VdpaError, match="Virtq statistics is not supported for device 0000:00:06.1.") as e:
            call()
        assert e.value.errno == errno.ENOTSUP
