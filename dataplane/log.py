"""Structured logging for the dataplane (structlog), with DPDK-style levels.

Every log line carries ``lcore`` (the lcore id of the emitting worker, set by
the launcher with :func:`set_lcore`) and ``pid`` (``os.getpid()`` at emit
time, so it is right after ``fork``).

Levels follow DPDK's ``--log-level`` option: a list of rules
``(pattern, level)`` applied in order, where ``pattern`` is ``None`` for the
global level or a logger-name pattern.  A pattern matches a logger name when
it matches as an ``fnmatch`` glob (``dataplane.vhost.*``) or as a regular
expression matching the whole name (``dataplane\\.(vhost|virtio)``).  For a
given logger the last matching rule wins; with no matching rule the level is
``info``.  (DPDK treats the global level as a cap on every logtype; here a
later rule simply overrides an earlier one, which is what users expect from
``--log-level=info --log-level=dataplane.vhost:debug``.)

DPDK's eight levels map onto five: emergency/alert/critical -> critical,
error -> error, warning -> warning, notice/info -> info, debug -> debug.

Filtered calls are cheap: the level check happens in the logger method, before
the event dict is built or any processor runs.

Usage::

    from dataplane.log import get_logger
    log = get_logger(__name__)          # at module level, before configuration
    log.info("port started", port=0, queues=2)

    configure_logging([(None, "info"), ("dataplane.vhost*", "debug")], fmt="json")
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "CURRENT_LCORE",
    "DPDK_LEVELS",
    "LogLevelError",
    "configure_logging",
    "get_logger",
    "normalize_level",
    "set_lcore",
]

#: The lcore id of the current process; the launcher sets it in each worker
#: through :func:`set_lcore`.  ``None`` outside an lcore (e.g. helper threads).
CURRENT_LCORE: int | None = None

#: DPDK's log levels, in the order of their numbers 1..8 (``RTE_LOG_EMERG``
#: .. ``RTE_LOG_DEBUG``).
DPDK_LEVELS: tuple[str, ...] = (
    "emergency",
    "alert",
    "critical",
    "error",
    "warning",
    "notice",
    "info",
    "debug",
)

# DPDK level name -> the numeric level we filter on (the stdlib's numbers).
_DEBUG, _INFO, _WARNING, _ERROR, _CRITICAL = 10, 20, 30, 40, 50
_THRESHOLD_OF: dict[str, int] = {
    "emergency": _CRITICAL,
    "alert": _CRITICAL,
    "critical": _CRITICAL,
    "error": _ERROR,
    "warning": _WARNING,
    "notice": _INFO,
    "info": _INFO,
    "debug": _DEBUG,
}
_FORMATS = ("console", "json")


class LogLevelError(ValueError):
    """A log level is neither a DPDK level name nor a number 1-8."""


def set_lcore(lcore_id: int | None) -> None:
    """Record the lcore id of this process; every later log line carries it."""
    global CURRENT_LCORE
    CURRENT_LCORE = lcore_id


def normalize_level(level: str | int) -> str:
    """Return the DPDK level name for ``level``.

    Accepts what DPDK's ``--log-level`` accepts: a number 1-8, a level name,
    or a prefix of one (DPDK compares with ``strncmp``, so ``warn`` and
    ``err`` work; the first level in numeric order wins, as in DPDK).
    Case is ignored.
    """
    text = str(level).strip().lower()
    if not text:
        raise LogLevelError("empty log level")
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= len(DPDK_LEVELS):
            raise LogLevelError(f"log level {number} is out of range 1-{len(DPDK_LEVELS)}")
        return DPDK_LEVELS[number - 1]
    for name in DPDK_LEVELS:
        if name.startswith(text):
            return name
    raise LogLevelError(
        f"unknown log level {str(level)!r}: expected 1-8 or one of {', '.join(DPDK_LEVELS)}"
    )


# --------------------------------------------------------------------------
# Level rules.


class _Rule:
    """One ``(pattern, level)`` rule, with its pattern compiled once."""

    __slots__ = ("pattern", "threshold", "_regex")

    def __init__(self, pattern: str | None, level: str | int):
        self.pattern = pattern
        self.threshold = _THRESHOLD_OF[normalize_level(level)]
        self._regex: re.Pattern[str] | None = None
        if pattern is not None:
            try:
                self._regex = re.compile(pattern)
            except re.error:
                self._regex = None  # not a regex: glob only

    def matches(self, name: str | None) -> bool:
        if self.pattern is None:
            return True
        if name is None:
            return False
        if fnmatch.fnmatchcase(name, self.pattern):
            return True
        return self._regex is not None and self._regex.fullmatch(name) is not None


class _State:
    """The current configuration; module-global, replaced by configure_logging."""

    def __init__(self) -> None:
        self.rules: list[_Rule] = []
        self.stream: IO[str] | None = None  # None: sys.stderr at emit time
        self.thresholds: dict[str | None, int] = {}

    def threshold(self, name: str | None) -> int:
        """The minimum level logged for logger ``name`` (cached per name)."""
        try:
            return self.thresholds[name]
        except KeyError:
            pass
        value = _INFO
        for rule in self.rules:
            if rule.matches(name):
                value = rule.threshold
        self.thresholds[name] = value
        return value


_STATE = _State()


# --------------------------------------------------------------------------
# Processors and output.


def _add_process_info(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``lcore`` and ``pid``, read at emit time."""
    event_dict["lcore"] = CURRENT_LCORE
    event_dict["pid"] = os.getpid()
    return event_dict


class _StreamWriter:
    """The wrapped logger: writes each rendered line to the configured stream.

    The stream is looked up at every write so that reconfiguration reaches
    loggers created earlier, and so that ``stream=None`` follows a replaced
    ``sys.stderr`` (as pytest's capture does).
    """

    def msg(self, message: str) -> None:
        stream = _STATE.stream if _STATE.stream is not None else sys.stderr
        stream.write(message + "\n")
        stream.flush()

    debug = info = warning = warn = error = critical = exception = log = msg


def _build_processors(fmt: str, colors: bool) -> list[Any]:
    common: list[Any] = [
        _add_process_info,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        return common + [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    return common + [structlog.dev.ConsoleRenderer(colors=colors)]


# Shared by every logger and updated in place, so reconfiguration reaches
# loggers that were created (e.g. at import time) before it.
_PROCESSORS: list[Any] = _build_processors("console", colors=False)
_WRITER = _StreamWriter()


class DataplaneLogger(structlog.BoundLoggerBase):
    """A structlog bound logger that filters by its ``logger`` name.

    The level check runs first and costs a dict lookup; filtered calls build
    no event dict and run no processor.  Positional arguments are
    %-formatted into the event, as in structlog's filtering loggers.
    """

    def is_enabled_for(self, level: str | int) -> bool:
        """Whether a message at DPDK ``level`` would be emitted."""
        return _THRESHOLD_OF[normalize_level(level)] >= _STATE.threshold(self._context.get("logger"))

    def _log(self, method: str, event: str | None, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if args and event is not None:
            event = event % args
        # structlog's global processors (ours unless structlog.testing.capture_logs swapped them).
        self._processors = structlog.get_config()["processors"]
        return self._proxy_to_logger(method, event, **kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _DEBUG < _STATE.threshold(self._context.get("logger")):
            return None
        return self._log("debug", event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _INFO < _STATE.threshold(self._context.get("logger")):
            return None
        return self._log("info", event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _WARNING < _STATE.threshold(self._context.get("logger")):
            return None
        return self._log("warning", event, args, kw)

    warn = warning

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _ERROR < _STATE.threshold(self._context.get("logger")):
            return None
        return self._log("error", event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if _CRITICAL < _STATE.threshold(self._context.get("logger")):
            return None
        return self._log("critical", event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log at error level with the current exception's traceback."""
        if _ERROR < _STATE.threshold(self._context.get("logger")):
            return None
        kw.setdefault("exc_info", True)
        return self._log("error", event, args, kw)


def get_logger(name: str) -> DataplaneLogger:
    """Return a logger bound with ``logger=name``.

    Safe to call at import time: later :func:`configure_logging` calls apply
    to loggers already handed out.
    """
    return DataplaneLogger(_WRITER, _PROCESSORS, {"logger": name})


def configure_logging(
    levels: Iterable[tuple[str | None, str | int]] | None = None,
    fmt: str = "console",
    stream: IO[str] | None = None,
) -> None:
    """Configure levels, output format and stream for every dataplane logger.

    Args:
        levels: ``(pattern, level)`` rules applied in order (see the module
            docstring); ``None`` means ``[(None, "info")]``.  Levels are DPDK
            names or numbers 1-8.
        fmt: ``"console"`` (human-readable) or ``"json"`` (one JSON object
            per line, via structlog's ``JSONRenderer``).
        stream: where lines go; ``None`` means ``sys.stderr``, looked up at
            each write.

    Also points structlog's global configuration at the same processors and
    stream, so code calling ``dplog.get_logger()`` directly shares the
    format (it is not filtered by name).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    rules = [_Rule(pattern, level) for pattern, level in (levels or [(None, "info")])]
    colors = _isatty(stream if stream is not None else sys.stderr)

    _STATE.rules = rules
    _STATE.stream = stream
    _STATE.thresholds = {}
    _PROCESSORS[:] = _build_processors(fmt, colors)
    _apply_structlog_config()


def _apply_structlog_config() -> None:
    structlog.configure(
        processors=_PROCESSORS,
        logger_factory=lambda *_args: _WRITER,
        wrapper_class=structlog.BoundLogger,
        cache_logger_on_first_use=False,
    )


_apply_structlog_config()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
