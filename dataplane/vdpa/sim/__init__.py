"""The Linux vDPA simulators' "hardware": vdpasim_net and vdpasim_blk devices, each run by its own process.

:class:`~dataplane.vdpa.sim.hw.SimHardware` is the main-process handle;
:mod:`~dataplane.vdpa.sim.worker` the hardware process;
:mod:`~dataplane.vdpa.sim.kernels` its numba data path;
:mod:`~dataplane.vdpa.sim.spec` the devices' facts.

:func:`warm_up` ``("net" | "blk")`` compiles a kind's kernels in the calling
process (an app does it once before probing, so each hardware process loads
them from numba's cache in about a second instead of compiling them).
"""

from .hw import SimHardware, SimHardwareError
from .kernels import warm_up

__all__ = ["SimHardware", "SimHardwareError", "warm_up"]
