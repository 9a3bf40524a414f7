"""The vhost-user-blk device: a virtio-blk disk served from shared memory or a shared-mapped file.

* :mod:`.spec` -- virtio-blk facts as data: feature bits, request types,
  status codes, the ``struct virtio_blk_config`` layout.
* :mod:`.storage` -- the disk: a RAM disk in a memfd segment or a file mapped shared.
* :mod:`.requests` -- the numba burst kernel that parses and completes requests.
* :mod:`.lcore` -- the lcore side: vrings handed over to a poll loop.
"""
