"""Completions to guest interrupts (facts §3.6): the event thread's policy and the CQ/QP arithmetic.

Pure pieces the driver's ``vDPA-mlx5-<vid>`` thread is built from, with the clock and every
side effect injected so tests run them step by step:

* :class:`EventCq` -- one virtq's event CQ and SW QP in QP mode: the CQ has 2**ceil(log2(queue
  size)) entries and the hardware always writes ``cqes[0]``; a poll reads its
  ``wqe_counter`` and completes ``comp = (u16)(wqe_counter + 1 - qp_pi)`` entries: the CQ
  doorbell record becomes ``cq_ci`` (24 bits), the SW QP doorbell record ``qp_pi + cq_size``.
  Arming writes ``arm_sn << 28 | CMD_ALL | cq_ci`` (and the CQ number) to the UAR.
* :class:`TimerPolicy` -- modes 0 (dynamic timer) and 1 (fixed timer): after every poll of all
  virtqs (``max`` = the largest comp), either sleep ``delay`` µs (0: yield the CPU) or, after
  ``no_traffic_time`` + 1 empty polls in a row, arm every CQ and block on the event channel.
  Dynamic mode adjusts the delay after each poll: ``max == 0`` -> ``delay += event_us``,
  ``max == 1`` -> unchanged, ``max > 1`` -> ``delay //= max``.  Waking from the block resets
  the delay to ``event_us`` and the counter to 0, and then (as DPDK does) the sleep step runs
  with ``max == 0``: in dynamic mode the first sleep after a wake is ``2 * event_us``.
* :class:`InterruptPolicy` -- mode 2: block for an event, complete that virtq, re-arm its CQ.
* :func:`run_event_thread` -- the loop itself over those, with the card-facing operations as
  callables (poll all virtqs, arm all, wait for an event, complete one, arm one, sleep, yield).

A completion with ``comp > 0`` is what writes 1 to the guest's callfd (when it is not -1):
the caller does it for every virtq whose poll returned more than 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from dataplane import log as dplog

__all__ = [
    "CQ_INDEX_MASK",
    "CQ_SQN_OFFSET",
    "CQ_DBR_CMD_ALL",
    "CQE_REQ_ERR",
    "CQE_RESP_ERR",
    "WQE_COUNTER_INIT",
    "EventCq",
    "Action",
    "EventHooks",
    "TimerPolicy",
    "InterruptPolicy",
    "make_policy",
    "run_event_thread",
    "delay_summary",
]

log = dplog.get_logger("dataplane.vdpa.mlx5")

#: MLX5_CI_MASK: the CQ consumer index is 24 bits.
CQ_INDEX_MASK = 0xFFFFFF
#: MLX5_CQ_SQN_OFFSET: where the 2-bit arm sequence number sits in the arm doorbell.
CQ_SQN_OFFSET = 28
#: MLX5_CQ_DBR_CMD_ALL: request an event for any completion (SOL_ONLY would be 1 << 24).
CQ_DBR_CMD_ALL = 0
#: CQE opcodes (op_own >> 4) of error completions.
CQE_REQ_ERR = 0xD
CQE_RESP_ERR = 0xE
#: cqes[0].wqe_counter as the driver initialises it (and resets it on drain): "nothing completed yet".
WQE_COUNTER_INIT = 0xFFFF


def _log2_ceil(n: int) -> int:
    return max(0, (n - 1).bit_length())


class EventCq:
    """One virtq's event CQ + SW QP, reduced to its indices and doorbell records."""

    def __init__(self, queue_size: int, cq_id: int = 0):
        if queue_size < 1:
            raise ValueError("queue size must be at least 1")
        self.log_desc_n = _log2_ceil(queue_size)
        self.cq_size = 1 << self.log_desc_n
        self.cq_id = cq_id
        self.cq_ci = 0
        self.qp_pi = 0
        self.arm_sn = 0
        self.armed = False
        self.errors = 0
        self.cq_dbr = 0  # CQ doorbell record (consumer index)
        self.arm_dbr = 0  # CQ arm doorbell record
        self.sw_qp_dbr = self.cq_size  # the SW QP's receive doorbell record starts at 2**log

    def completions(self, wqe_counter: int) -> int:
        """``(u16)(wqe_counter + 1 - qp_pi)``: the entries completed since the last poll."""
        return (wqe_counter + 1 - self.qp_pi) & 0xFFFF

    def poll(self, wqe_counter: int, opcode: int | None = None) -> int:
        """Consume what cqes[0] shows; returns comp and, when > 0, updates the indices and doorbell records.

        ``opcode`` is cqes[0]'s (op_own >> 4), if known.  DPDK counts ``errors`` when the opcode
        is **not** an error opcode (a quirk kept for fidelity; do not rely on the counter).
        """
        comp = self.completions(wqe_counter)
        if comp:
            self.cq_ci = (self.cq_ci + comp) & CQ_INDEX_MASK
            if opcode is not None and opcode not in (CQE_REQ_ERR, CQE_RESP_ERR):
                self.errors += 1
            self.cq_dbr = self.cq_ci
            self.qp_pi = (self.qp_pi + comp) & 0xFFFF
            self.sw_qp_dbr = (self.qp_pi + self.cq_size) & 0xFFFFFFFF
            self.armed = False
        return comp

    def arm(self) -> tuple[int, int]:
        """Arm the CQ: ``(64-bit UAR doorbell, arm doorbell record)``; the sequence number then advances (2 bits)."""
        hi = (self.arm_sn & 0x3) << CQ_SQN_OFFSET | CQ_DBR_CMD_ALL | (self.cq_ci & CQ_INDEX_MASK)
        self.arm_dbr = hi
        self.arm_sn = (self.arm_sn + 1) & 0x3
        self.armed = True
        return hi << 32 | (self.cq_id & 0xFFFFFFFF), hi

    def drain_reset(self, wqe_counter: int) -> tuple[int, int]:
        """At close: complete once, then the driver rewrites cqes[0].wqe_counter = 0xFFFF, qp_pi = 0, and re-arms."""
        self.poll(wqe_counter)
        self.qp_pi = 0
        return self.arm()


class Action(NamedTuple):
    """What the event thread does next: "sleep" (``delay_us``), "yield", "arm_and_wait" or "wait"."""

    kind: str
    delay_us: int = 0


class TimerPolicy:
    """Modes 0 (dynamic) and 1 (fixed): the delay and the no-traffic counter, clock-injected."""

    def __init__(self, mode: int, event_us: int, no_traffic_max: int, clock: Callable[[], float] = time.monotonic):
        if mode not in (0, 1):
            raise ValueError(f"event mode {mode} is not a timer mode")
        self.mode = mode
        self.event_us = event_us
        self.no_traffic_max = no_traffic_max
        self.clock = clock
        self.delay_us = event_us
        self.no_traffic_counter = 0
        self.blocks = 0  # times the thread armed the CQs and blocked
        self.next_poll_at: float | None = None

    def after_poll(self, max_comp: int) -> Action:
        """The step after a poll of every virtq."""
        if max_comp == 0:
            counter = self.no_traffic_counter
            self.no_traffic_counter += 1
            if counter >= self.no_traffic_max:
                self.blocks += 1
                self.next_poll_at = None
                return Action("arm_and_wait")
        else:
            self.no_traffic_counter = 0
        return self._sleep(max_comp)

    def woken(self) -> Action:
        """Traffic again after a block: reset, then the sleep step of the poll that led to the block (max 0)."""
        self.delay_us = self.event_us
        self.no_traffic_counter = 0
        return self._sleep(0)

    def _sleep(self, max_comp: int) -> Action:
        if self.mode == 0:
            if max_comp == 0:
                self.delay_us += self.event_us
            elif max_comp > 1:
                self.delay_us //= max_comp
        self.next_poll_at = self.clock() + self.delay_us / 1e6
        return Action("sleep", self.delay_us) if self.delay_us else Action("yield")


class InterruptPolicy:
    """Mode 2: interrupts only -- wait, complete the virtq that fired, re-arm its CQ."""

    mode = 2

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.events = 0

    def next(self) -> Action:
        return Action("wait")


def make_policy(mode: int, event_us: int, no_traffic_max: int, clock: Callable[[], float] = time.monotonic):
    """The policy for ``event_mode`` (devargs): TimerPolicy for 0 and 1, InterruptPolicy for 2."""
    if mode == 2:
        return InterruptPolicy(clock)
    return TimerPolicy(mode, event_us, no_traffic_max, clock)


@dataclass
class EventHooks:
    """The operations the loop needs from the driver (all card-facing)."""

    poll_all: Callable[[], int]  # complete every virtq (writing callfds), return the largest comp
    arm_all: Callable[[], None]
    wait: Callable[[], Any]  # block for a CQ event; the virtq it names, or None (channel error / stop)
    complete: Callable[[Any], int]  # complete one virtq; its comp
    arm: Callable[[Any], None]
    sleep_us: Callable[[int], None]
    yield_cpu: Callable[[], None]
    stop: Callable[[], bool]
    #: mode 2: an event came for the virtq's CQ, which the card disarmed (the next arm is due even if the poll
    #: finds nothing new: a CQ left "armed" for the driver but not for the card never gives an event again)
    disarmed: Callable[[Any], None] | None = None


def run_event_thread(policy, hooks: EventHooks) -> None:
    """The event thread's loop for ``policy`` until ``hooks.stop()`` is true."""
    if isinstance(policy, InterruptPolicy):
        while not hooks.stop():
            vq = hooks.wait()
            if vq is None:
                continue
            policy.events += 1
            if hooks.disarmed is not None:
                hooks.disarmed(vq)
            hooks.complete(vq)
            hooks.arm(vq)
        return
    while not hooks.stop():
        action = policy.after_poll(hooks.poll_all())
        if action.kind == "arm_and_wait":
            log.debug("traffic was stopped: waiting for an event")
            hooks.arm_all()
            while not hooks.stop():
                vq = hooks.wait()
                if vq is None or hooks.complete(vq) > 0:
                    break
            action = policy.woken()
        if action.kind == "sleep":
            hooks.sleep_us(action.delay_us)
        else:
            hooks.yield_cpu()


def delay_summary(delays_ns) -> dict:
    """Completion delays (ns, CQE written -> guest interrupt) as µs: ``n``, ``median``, ``p90``, ``p99``, ``max``."""
    xs = sorted(delays_ns)
    if not xs:
        return {"n": 0}

    def q(f: float) -> float:
        return round(xs[min(len(xs) - 1, int(f * len(xs)))] / 1000.0, 1)

    return {"n": len(xs), "median": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(xs[-1] / 1000.0, 1)}
