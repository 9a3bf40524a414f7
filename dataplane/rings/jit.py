"""Low-level JIT building blocks for NRT-free kernels.

The hot-path kernels of :mod:`dataplane.rings.ring`, :mod:`~dataplane.rings.split`,
:mod:`~dataplane.rings.packed` and :mod:`dataplane.memory.mempool` share
these decorators and intrinsics.

Decorators
----------
:data:`kernel` is ``njit(cache=True, _nrt=False)``, :data:`inline_kernel`
the same with ``inline="always"`` (numba-IR inlining, for small helpers).

*Why* ``_nrt=False``: with the numba runtime (NRT) every out-of-line call
increfs and decrefs each array argument (an atomic read-modify-write and an
indirect call each), also around branches, and numba's IR inlining brings
the same refcounts along.  The kernels take namedtuples of arrays (a vring,
a driver state, a mempool), so this cost more than their work: an empty
``packed_dev_fetch`` took 600 ns with NRT and 25 ns without.  Without NRT
numba emits no reference counting at all, which is sound only because these
kernels never allocate and never return an array (a caller compiled with
NRT would drop a reference it does not own); scratch memory comes from the
stack (:func:`stack_array_u32`) and memory found at run time is read through
raw addresses (:mod:`dataplane.rings.mem`).  A kernel that needs either keeps
plain ``njit(cache=True)``.  Callees inherit the caller's NRT setting, so
nothing a kernel calls may allocate either.

*Risk*: ``_nrt`` is a private numba option (a ``TargetOptions`` flag, not
documented); it works on numba 0.68 (pyproject only asks for >= 0.60).  If
a numba upgrade drops or renames it, ``njit`` rejects the option when the
first kernel compiles: fix it here, in one place.

Always inline
-------------
``always_inline()``, called first in a kernel, marks the LLVM function
``alwaysinline`` (DPDK's ``__rte_always_inline``).  LLVM's inliner finds the
ring and mempool workers too large to inline by itself, and an out-of-line
call copies every word of the namedtuples it is passed onto the stack (three
arrays: ~15 cycles; a mempool: 57 words).  Inlined into the caller's loop,
literal flags (``single``, ``is_bulk``) constant-fold away.  Unlike
:data:`inline_kernel` it inlines after numba's typing, at the LLVM level.

Intrinsics (all cacheable, NRT-free)
------------------------------------
Loads and stores at raw addresses live beside this module, in
:mod:`dataplane.rings.mem`.

* :func:`sched_yield` -- libc ``sched_yield()`` for long spin waits.
* :func:`eventfd_signal` -- libc ``write(fd, &1, 8)``: signal an eventfd
  (a kick or an interrupt) from a kernel.
* :func:`stack_array_u32` ``(n)``: a ``uint32[n]`` array on the calling
  function's stack (``n`` a compile-time constant).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "kernel",
    "inline_kernel",
    "loop_kernel",
    "always_inline",
    "sched_yield",
    "eventfd_signal",
    "stack_array_u32",
]

kernel = njit(cache=True, _nrt=False)
inline_kernel = njit(cache=True, _nrt=False, inline="always")
#: A poll loop: like :data:`kernel` but releases the GIL, so a loop on the main
#: lcore leaves the vhost-events and signal-watcher threads running.
loop_kernel = njit(cache=True, _nrt=False, nogil=True)


@intrinsic
def always_inline(typingctx):
    """Mark the calling function ``alwaysinline`` for LLVM (see the module doc)."""

    def codegen(context, builder, sig, args):
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def sched_yield(typingctx):
    """Call libc ``sched_yield()``: give the CPU away in a long spin.
    (An intrinsic, unlike a ctypes call, is cacheable.)"""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def eventfd_signal(typingctx, fd):
    """libc ``write(fd, &(u64)1, 8)``: signal an eventfd; returns write's result.

    Declared as an external symbol (not a ctypes pointer), so functions that
    call it can be cached (DESIGN §5: ~210 ns a call).
    """
    if not isinstance(fd, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i64, [i32, i8p, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "write")
        buf = cgutils.alloca_once(builder, i64)
        builder.store(ir.Constant(i64, 1), buf)
        fdv = builder.trunc(context.cast(builder, args[0], sig.args[0], types.int64), i32)
        return builder.call(fn, [fdv, builder.bitcast(buf, i8p), ir.Constant(i64, 8)])

    return types.int64(fd), codegen


_U32_ARRAY = types.Array(types.uint32, 1, "C")


@intrinsic
def stack_array_u32(typingctx, n):
    """A ``uint32[n]`` array on the calling function's stack (no NRT, no heap);
    ``n`` must be a compile-time integer constant.  It must not outlive the
    calling function."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    count = n.literal_value

    def codegen(context, builder, sig, args):
        elty = context.get_data_type(types.uint32)
        ptr = cgutils.alloca_once(builder, elty, size=count)
        ary = context.make_array(_U32_ARRAY)(context, builder)
        intp = context.get_value_type(types.intp)
        context.populate_array(
            ary,
            data=ptr,
            shape=[ir.Constant(intp, count)],
            strides=[ir.Constant(intp, 4)],
            itemsize=ir.Constant(intp, 4),
            meminfo=None,
        )
        return ary._getvalue()

    return _U32_ARRAY(n), codegen
