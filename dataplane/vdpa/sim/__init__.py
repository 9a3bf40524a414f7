"""The Linux vDPA simulators' "hardware": vdpasim_net and vdpasim_blk devices, each run by its own process.

:class:`~dataplane.vdpa.sim.hw.SimHardware` is the main-process handle;
:mod:`~dataplane.vdpa.sim.worker` the hardware process;
:mod:`~dataplane.vdpa.sim.kernels` its numba data path;
:mod:`~dataplane.vdpa.sim.spec` the devices' facts.
"""

from .hw import SimHardware, SimHardwareError

__all__ = ["SimHardware", "SimHardwareError"]
