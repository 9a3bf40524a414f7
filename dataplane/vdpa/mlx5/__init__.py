"""The mlx5 vDPA driver (DPDK 22.11's ``drivers/vdpa/mlx5``) over the emulated ConnectX-6 Dx.

:mod:`.driver` (probe ``-a BDF,class=vdpa[,devargs]``, the ops, the kick relay, the event and
error threads, the management device ``pci/<bdf>``; registered in the vDPA registry, the
features table and ``dataplane-vdpa``) and :mod:`.hw` (the VF: control channel, BAR0, the
firmware command slot) over the pure parts: :mod:`.devargs`, :mod:`.features`, :mod:`.mem`
(the indirect mkey layout), :mod:`.event` (the event thread's policy and CQ arithmetic),
:mod:`.recovery`, :mod:`.stats` and :mod:`.rss` (reference symmetric Toeplitz, the 7 flow
classes).  See docs/vdpa.md, "mlx5".
"""
