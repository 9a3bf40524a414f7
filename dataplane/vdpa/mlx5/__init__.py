"""The mlx5 vDPA driver (DPDK 22.11's ``drivers/vdpa/mlx5``), in progress: the parts that need no card.

What exists (pure, tested): :mod:`.devargs` (``class=vdpa`` and the driver's devargs),
:mod:`.features` (features, protocol features, queue count, checks of the caps and of the
negotiated features), :mod:`.mem` (the indirect mkey layout over guest memory),
:mod:`.event` (the event thread's policy and the CQ/QP completion arithmetic),
:mod:`.recovery` (the error-event policy), :mod:`.stats` (the six counters) and
:mod:`.rss` (a reference symmetric Toeplitz hash and the 7 flow classes).

The driver is **not registered** anywhere yet (no vDPA registry entry, no features-table
column, no ``-a BDF,class=vdpa`` dispatch): it cannot run end to end before the card has its
CQ/QP event objects, and nothing is advertised that does not work.  See docs/vdpa.md,
"mlx5 (in progress)".
"""
