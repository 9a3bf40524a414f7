"""Device interface specifications -- PCI ids, register and command layouts -- that a driver and
its emulated card both read.

Data only, defined once: a driver (``dataplane.vdpa``) and the card it drives (``dataplane.nic``) are
peers that never import each other, so what both must agree on lives here, below both.

* :mod:`~dataplane.hwspec.mlx5_prm` -- the mlx5 (ConnectX-6 Dx) PCI ids, BAR0 and mailbox
  register layout, command opcodes, statuses, syndromes and the big-endian wire layouts.
"""
