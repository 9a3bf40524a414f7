"""Emulated vDPA-capable hardware (``dataplane-nic``): an Intel IFC VF card.

A driver never imports this package: it meets a card only through the
files a PCI function shows (``config``, ``resource0``, ``resource4``, see
:mod:`~dataplane.nic.pci`), the control channel ``vfio.sock`` (DMA map,
MSI-X eventfds, region info, see :mod:`~dataplane.nic.card`), doorbells and
interrupts.  The card's process (:mod:`~dataplane.nic.card`) polls its
registers and doorbells and walks the guest rings through the DMA map with
numba kernels (:mod:`~dataplane.nic.kernels`), switching frames between its
VFs.  Counters are in ``<card dir>/counters`` (:mod:`~dataplane.nic.shm`).
The DMA map every card uses is :mod:`~dataplane.nic.dma`.  The ConnectX-6 Dx
(mlx5) card is being built in :mod:`dataplane.nic.mlx5` (its firmware command
interface so far; not yet startable).
"""
