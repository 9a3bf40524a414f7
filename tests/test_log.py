"""structlog configuration: lcore/pid on every line, DPDK-style level patterns."""

from __future__ import annotations

import io
import json
import os

import pytest
import structlog

from dataplane import log
from dataplane.log import LogLevelError, configure_logging, get_logger, normalize_level, set_lcore


@pytest.fixture(autouse=True)
def _restore_logging():
    """Leave the defaults behind: ours, and structlog's global configuration."""
    yield
    configure_logging()
    structlog.reset_defaults()
    set_lcore(None)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_lcore_pid_and_logger():
    out = io.StringIO()
    configure_logging([(None, "info")], fmt="json", stream=out)
    set_lcore(3)
    get_logger("dataplane.vhost").info("port started", port=0, queues=2)
    set_lcore(5)
    get_logger("dataplane.virtio").warning("link down")

    first, second = json_lines(out)
    assert first["event"] == "port started"
    assert first["logger"] == "dataplane.vhost"
    assert first["level"] == "info"
    assert first["lcore"] == 3
    assert first["pid"] == os.getpid()
    assert (first["port"], first["queues"]) == (0, 2)
    assert "timestamp" in first
    assert second["lcore"] == 5 and second["level"] == "warning"
    assert log.CURRENT_LCORE == 5


def test_lcore_is_null_outside_an_lcore():
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    get_logger("dataplane.test").info("hello")
    assert json_lines(out)[0]["lcore"] is None


def test_pid_is_read_at_emit_time_after_fork(tmp_path):
    path = tmp_path / "log.jsonl"
    with open(path, "a", buffering=1) as stream:
        configure_logging(fmt="json", stream=stream)
        logger = get_logger("dataplane.test")
        logger.info("parent")
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                set_lcore(1)
                logger.info("child")
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    records = {r["event"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert records["parent"]["pid"] == os.getpid()
    assert records["child"]["pid"] == child
    assert records["child"]["lcore"] == 1


@pytest.mark.parametrize(
    "levels, expected",
    [
        # Global level only.
        ([(None, "info")],
         {"vhost.info", "vhost.warning", "virtio.info", "virtio.warning", "eal.info", "eal.warning"}),
        ([(None, "warning")], {"vhost.warning", "virtio.warning", "eal.warning"}),
        # A glob pattern raises one logger family to debug.
        (
            [(None, "info"), ("dataplane.vhost*", "debug")],
            {"vhost.debug", "vhost.info", "vhost.warning", "virtio.info", "virtio.warning",
             "eal.info", "eal.warning"},
        ),
        # A regex pattern matching the whole name.
        (
            [(None, "warning"), (r"dataplane\.(vhost|virtio)", "debug")],
            {"vhost.debug", "vhost.info", "vhost.warning", "virtio.debug", "virtio.info", "virtio.warning",
             "eal.warning"},
        ),
        # The last matching rule wins.
        ([("dataplane.*", "debug"), (None, "error")], set()),
        ([(None, "error"), ("lib.eal", "debug")], {"eal.debug", "eal.info", "eal.warning"}),
        # DPDK levels map onto five: notice -> info, emergency -> critical.
        ([(None, "notice")],
         {"vhost.info", "vhost.warning", "virtio.info", "virtio.warning", "eal.info", "eal.warning"}),
        ([(None, 8)], {f"{n}.{lvl}" for n in ("vhost", "virtio", "eal") for lvl in ("debug", "info", "warning")}),
        ([(None, "emergency")], set()),
    ],
)  # fmt: skip
def test_level_filtering_by_pattern(levels, expected):
    out = io.StringIO()
    configure_logging(levels, fmt="json", stream=out)
    loggers = {
        "vhost": get_logger("dataplane.vhost"),
        "virtio": get_logger("dataplane.virtio"),
        "eal": get_logger("lib.eal"),
    }
    for short, logger in loggers.items():
        for level in ("debug", "info", "warning"):
            getattr(logger, level)(f"{short}.{level}")
    assert {record["event"] for record in json_lines(out)} == expected


def test_critical_and_emergency():
    out = io.StringIO()
    configure_logging([(None, "alert")], fmt="json", stream=out)
    logger = get_logger("dataplane.test")
    logger.error("dropped")
    logger.critical("kept")
    assert [r["event"] for r in json_lines(out)] == ["kept"]


def test_loggers_created_before_configuration_follow_it():
    early = get_logger("dataplane.early")  # like a module-level logger
    out = io.StringIO()
    configure_logging([(None, "error"), ("dataplane.early", "debug")], fmt="json", stream=out)
    early.debug("seen")
    configure_logging([(None, "error")], fmt="json", stream=out)
    early.debug("not seen")
    assert [r["event"] for r in json_lines(out)] == ["seen"]


def test_filtered_calls_do_no_work():
    class Explosive:
        def __repr__(self):
            raise AssertionError("rendered a filtered event")

        __str__ = __repr__

    out = io.StringIO()
    configure_logging([(None, "info")], fmt="json", stream=out)
    logger = get_logger("dataplane.hot")
    logger.debug("per packet %s", Explosive(), obj=Explosive())
    assert out.getvalue() == ""
    assert not logger.is_enabled_for("debug")
    assert logger.is_enabled_for("notice")


def test_positional_arguments_are_formatted():
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    get_logger("dataplane.test").info("rx %d packets on %s", 32, "port0")
    assert json_lines(out)[0]["event"] == "rx 32 packets on port0"


def test_bound_context_is_kept():
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    get_logger("dataplane.vhost").bind(vid=7).info("ready")
    record = json_lines(out)[0]
    assert record["vid"] == 7 and record["logger"] == "dataplane.vhost"


def test_exception_in_json():
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("dataplane.test").exception("failed")
    record = json_lines(out)[0]
    assert record["level"] == "error"
    assert "RuntimeError: boom" in record["exception"]


def test_console_format():
    out = io.StringIO()
    configure_logging(fmt="console", stream=out)
    set_lcore(2)
    get_logger("dataplane.vhost").info("hello", queue=1)
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "hello" in line and "lcore=2" in line and f"pid={os.getpid()}" in line and "queue=1" in line
    assert "dataplane.vhost" in line


def test_plain_structlog_loggers_share_the_format():
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    set_lcore(4)
    structlog.get_logger().info("direct", k=1)
    record = json_lines(out)[0]
    assert (record["event"], record["lcore"], record["pid"], record["k"]) == ("direct", 4, os.getpid(), 1)


def test_default_stream_is_stderr_at_emit_time(capsys):
    configure_logging(fmt="json")
    get_logger("dataplane.test").warning("to stderr")
    assert json.loads(capsys.readouterr().err)["event"] == "to stderr"


@pytest.mark.parametrize(
    "given, name",
    [
        (1, "emergency"), ("2", "alert"), (3, "critical"), (4, "error"),
        (5, "warning"), (6, "notice"), (7, "info"), (8, "debug"),
        ("DEBUG", "debug"), ("warn", "warning"), ("crit", "critical"), ("e", "emergency"),
    ],
)  # fmt: skip
def test_normalize_level(given, name):
    assert normalize_level(given) == name


@pytest.mark.parametrize("given", [0, 9, "", "verbose", "-1"])
def test_normalize_level_rejects(given):
    with pytest.raises(LogLevelError):
        normalize_level(given)


def test_configure_rejects_bad_input():
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging(fmt="xml")
    with pytest.raises(LogLevelError):
        configure_logging([(None, "loud")])
