"""mlx5 vDPA devargs (facts §3.1): classes, strtoul base 0, casts, defaults and the warnings."""

import pytest
import structlog

from dataplane.vdpa.mlx5.devargs import (
    ConfThreads,
    DevargsError,
    NotOurDevice,
    parse_devargs,
    strtoul,
)


def parse(args, **kw):
    kw.setdefault("online_cores", 4)
    kw.setdefault("conf_threads", ConfThreads())
    with structlog.testing.capture_logs() as logs:
        out = parse_devargs(args, **kw)
    return out, [e["event"] for e in logs if e["log_level"] == "warning"]


@pytest.mark.parametrize("text, value", [
    ("10", 10), ("0x10", 16), ("0X1f", 31), ("010", 8), ("08", 0), ("  7", 7), ("+5", 5), ("12abc", 12),
    ("abc", 0), ("", 0), ("0x", 0), ("0xg", 0), ("-1", 2**64 - 1), ("-2", 2**64 - 2),
    ("18446744073709551615", 2**64 - 1),
])
def test_strtoul_base_0(text, value):
    assert strtoul(text) == (value, False)


def test_strtoul_overflow_is_erange():
    assert strtoul("18446744073709551616") == (2**64 - 1, True)
    assert strtoul("-0x10000000000000000") == (2**64 - 1, True)


def test_defaults():
    out, warnings = parse({"class": "vdpa"})
    assert (out.event_mode, out.event_us, out.no_traffic_max, out.event_core) == (1, 0, 16, -1)
    assert (out.hw_latency_mode, out.hw_max_latency_us, out.hw_max_pending_comp) == (0, 0, 0)
    assert (out.queue_size, out.queues, out.use_c_thread) == (0, 0, False)
    assert out.classes == {"vdpa"} and warnings == []


@pytest.mark.parametrize("cls", [None, "", "eth", "net", "regex", "crypto:compress"])
def test_not_ours_without_vdpa(cls):
    args = {} if cls is None else {"class": cls}
    with pytest.raises(NotOurDevice):
        parse(args)


@pytest.mark.parametrize("cls, classes", [("vdpa", {"vdpa"}), ("vdpa:regex", {"vdpa", "regex"}),
                                          ("crypto:vdpa", {"crypto", "vdpa"}), ("vdpa::", {"vdpa"})])
def test_ours_when_vdpa_is_among_the_classes(cls, classes):
    out, _ = parse({"class": cls})
    assert out.classes == classes


@pytest.mark.parametrize("cls", ["eth:vdpa", "vdpa:net", "net:regex:vdpa"])
def test_eth_with_vdpa_is_refused_by_the_bus(cls):
    with structlog.testing.capture_logs() as logs, pytest.raises(DevargsError, match="Unsupported mlx5 classes"):
        parse_devargs({"class": cls}, online_cores=4, conf_threads=ConfThreads())
    assert logs[0]["log_level"] == "error"


def test_unknown_class_is_an_error():
    with pytest.raises(DevargsError, match=r"Invalid mlx5 class options: vdpa:foo\."):
        parse({"class": "vdpa:foo"})


def test_event_mode_values_and_invalid():
    assert parse({"class": "vdpa", "event_mode": "2"})[0].event_mode == 2
    assert parse({"class": "vdpa", "event_mode": "0x0"})[0].event_mode == 0
    out, warnings = parse({"class": "vdpa", "event_mode": "3"})
    assert out.event_mode == 1 and warnings == ["Invalid event_mode 3."]
    out, warnings = parse({"class": "vdpa", "event_mode": "-1"})  # wraps to ULONG_MAX: > 2
    assert out.event_mode == 1 and warnings == ["Invalid event_mode -1."]


def test_event_us_default_step_in_dynamic_mode_only():
    assert parse({"class": "vdpa", "event_mode": "0"})[0].event_us == 1
    assert parse({"class": "vdpa", "event_mode": "0", "event_us": "0"})[0].event_us == 1
    assert parse({"class": "vdpa", "event_mode": "0", "event_us": "50"})[0].event_us == 50
    assert parse({"class": "vdpa", "event_mode": "1"})[0].event_us == 0
    assert parse({"class": "vdpa", "event_us": "0x100000064"})[0].event_us == 100  # (uint32_t)


def test_event_core_against_online_cores():
    assert parse({"class": "vdpa", "event_core": "3"}, online_cores=4)[0].event_core == 3
    out, warnings = parse({"class": "vdpa", "event_core": "4"}, online_cores=4)
    assert out.event_core == -1 and warnings == ["Invalid event_core 4."]
    out, warnings = parse({"class": "vdpa", "event_core": "-1"}, online_cores=4)
    assert out.event_core == -1 and warnings == ["Invalid event_core -1."]


def test_queue_size_and_queues_go_together():
    out, warnings = parse({"class": "vdpa", "queue_size": "256", "queues": "4"})
    assert (out.queue_size, out.queues, warnings) == (256, 4, [])
    for args in ({"queue_size": "256"}, {"queues": "4"}, {"queue_size": "256", "queues": "0"}):
        out, warnings = parse({"class": "vdpa", **args})
        assert (out.queue_size, out.queues) == (0, 0)
        assert warnings == ["Please provide both queue_size and queues."]
    # (uint16_t): 0x10000 is 0, so the pair is incomplete
    out, warnings = parse({"class": "vdpa", "queue_size": "0x10000", "queues": "2"})
    assert (out.queue_size, out.queues) == (0, 0) and warnings


def test_hw_moderation_kept_as_given_and_masked_for_the_virtq():
    out, _ = parse({"class": "vdpa", "hw_latency_mode": "2", "hw_max_latency_us": "4095",
                    "hw_max_pending_comp": "65535"})
    assert (out.hw_latency_mode, out.hw_max_latency_us, out.hw_max_pending_comp) == (2, 4095, 65535)
    out, _ = parse({"class": "vdpa", "hw_max_latency_us": "4096", "hw_max_pending_comp": "0x10001"})
    assert out.hw_max_latency_us == 4096
    assert out.virtq_moderation() == dict(hw_latency_mode=0, hw_max_latency_us=0, hw_max_pending_comp=1)


def test_no_traffic_time():
    assert parse({"class": "vdpa", "no_traffic_time": "0"})[0].no_traffic_max == 0
    assert parse({"class": "vdpa", "no_traffic_time": "0x20"})[0].no_traffic_max == 32


def test_unknown_key_warns_and_strict_fails_like_the_bus():
    out, warnings = parse({"class": "vdpa", "foo": "1", "mr_ext_memseg_en": "1"})
    assert warnings == ["Invalid key foo."] and out.unknown_keys == ["foo"]
    with pytest.raises(DevargsError, match='Key "foo" is unknown for the provided classes.'):
        parse({"class": "vdpa", "foo": "1"}, strict=True)


def test_overflow_stops_the_key_loop():
    out, warnings = parse([("class", "vdpa"), ("event_us", "5"), ("no_traffic_time", "99999999999999999999"),
                           ("event_mode", "2")])
    assert warnings == ['no_traffic_time: "99999999999999999999" is an invalid integer.']
    assert out.event_us == 5 and out.no_traffic_max == 16 and out.event_mode == 1
    assert out.unused_keys == ["no_traffic_time", "event_mode"]
    with pytest.raises(DevargsError, match='Key "no_traffic_time"'):
        parse({"class": "vdpa", "no_traffic_time": "99999999999999999999"}, strict=True)


def test_later_duplicate_wins():
    assert parse([("class", "vdpa"), ("event_mode", "0"), ("event_mode", "2")])[0].event_mode == 2


def test_max_conf_threads_is_global_first_device_wins():
    threads = ConfThreads()
    a, w = parse({"class": "vdpa", "max_conf_threads": "300"}, conf_threads=threads)
    assert a.use_c_thread and threads.max_thrds == 256
    assert w == ["Invalid max_conf_threads 300 and set max_conf_threads to 256"]
    b, w = parse({"class": "vdpa", "max_conf_threads": "4"}, conf_threads=threads)
    assert b.use_c_thread and threads.max_thrds == 256 and threads.initializer is a
    assert w == ["max_conf_threads is PMD argument and not per device, only the first device configuration set it, "
                 "current value is 256 and will not be changed to 4."]
    c, w = parse({"class": "vdpa", "max_conf_threads": "0"}, conf_threads=threads)
    assert not c.use_c_thread and w == [] and threads.max_thrds == 256
    threads.reset()
    parse({"class": "vdpa", "max_conf_threads": "8"}, conf_threads=threads)
    assert threads.max_thrds == 8
