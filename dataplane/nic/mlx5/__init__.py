"""The emulated ConnectX-6 Dx (mlx5) card, in progress.

* :mod:`~dataplane.nic.mlx5.card` -- the running card (``dataplane-nic start mlx5``): PCI face, VAR doorbell,
  the VIRTIO_NET_Q datapath through the shared switch;
* :mod:`~dataplane.hwspec.mlx5_prm` (below both card and driver) -- PCI ids, registers, opcodes,
  statuses, syndromes and the wire layouts, as data;
* :mod:`~dataplane.nic.mlx5.mailbox` -- the command slot in a BAR file, polled by the card;
* :mod:`~dataplane.nic.mlx5.objects` -- the object model a command acts on (PD, umem, counters,
  VIRTIO_NET_Q and its state machine);
* :mod:`~dataplane.nic.mlx5.mkey` -- direct and indirect (KLM, KLM_FBS) mkeys and their translation
  into the region tables the ring kernels read;
* :mod:`~dataplane.nic.mlx5.steer` -- RSS: flow rules -> TIR -> RQT as arrays, the Toeplitz kernel
  that picks a frame's RX virtq, and its plain-Python reference.

Not yet: TIS objects, CQ moderation (docs/nic.md, "mlx5 card").
"""
