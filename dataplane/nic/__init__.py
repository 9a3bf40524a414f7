"""Emulated vDPA-capable hardware (``dataplane-nic``): an Intel IFC VF card and a ConnectX-6 Dx.

A driver never imports this package: it meets a card only through the
files a PCI function shows (``config``, ``resource0``, ``resource4``, see
:mod:`~dataplane.nic.pci`), the control channel ``vfio.sock`` (DMA map,
MSI-X eventfds, region info, see :mod:`~dataplane.nic.card`), doorbells and
interrupts.  The card's process (:mod:`~dataplane.nic.card`) polls its
registers and doorbells and walks the guest rings through the DMA map with
numba kernels (:mod:`~dataplane.nic.kernels`), switching frames between its
VFs.  Counters are in ``<card dir>/counters`` (:mod:`~dataplane.nic.shm`).
What every card shares: :mod:`~dataplane.nic.function` (a PCI function's
control channel, DMA map :mod:`~dataplane.nic.dma`, eventfds) and
:mod:`~dataplane.nic.cardproc` (the card process, main loop and switch).  The
ConnectX-6 Dx (``dataplane-nic start mlx5``) is :mod:`dataplane.nic.mlx5`
(firmware command interface, VAR doorbell, virtq datapath; CQ/QP events and
RSS steering are still to come).
"""
