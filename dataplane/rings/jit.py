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
raw addresses (:func:`load_u64` ...).  A kernel that needs either keeps
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
* :func:`sched_yield` -- libc ``sched_yield()`` for long spin waits.
* :func:`load_u16` / :func:`load_u32` / :func:`load_u64` ``(addr, idx)`` and
  :func:`store_u16` / :func:`store_u32` / :func:`store_u64` ``(addr, idx, val)``:
  plain (non-atomic) access to element ``idx`` of the array of that width
  starting at integer address ``addr`` (``addr + idx * size``), with
  ``align 1`` so an unaligned address is safe.  For memory found at run time
  (indirect tables in guest memory): without NRT a kernel cannot build an
  array view (``carray``) of it.  Ordering comes from the caller's
  acquire/release operations.
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
    "load_u16",
    "load_u32",
    "load_u64",
    "store_u16",
    "store_u32",
    "store_u64",
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


def _element_ptr(context, builder, sig, args, bits):
    """``(uintN*) addr + idx`` from the first two arguments."""
    base = context.cast(builder, args[0], sig.args[0], types.uint64)
    i = context.cast(builder, args[1], sig.args[1], types.intp)
    ptr = builder.inttoptr(base, ir.IntType(bits).as_pointer())
    return builder.gep(ptr, [i])


def _mem_access(nbt):
    """The load and store intrinsics of unsigned numba type ``nbt``."""
    bits = nbt.bitwidth

    @intrinsic
    def load(typingctx, addr, idx):
        if not isinstance(addr, types.Integer) or not isinstance(idx, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            return builder.load(_element_ptr(context, builder, sig, args, bits), align=1)

        return nbt(addr, idx), codegen

    @intrinsic
    def store(typingctx, addr, idx, val):
        if not all(isinstance(a, types.Integer) for a in (addr, idx, val)):
            return None

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[2], sig.args[2], nbt)
            builder.store(v, _element_ptr(context, builder, sig, args, bits), align=1)
            return context.get_dummy_value()

        return types.void(addr, idx, val), codegen

    load.__doc__ = f"``uint{bits}`` element ``idx`` at integer address ``addr`` (plain load, align 1)."
    store.__doc__ = f"Store ``val`` as ``uint{bits}`` element ``idx`` at integer address ``addr`` (plain, align 1)."
    return load, store


load_u16, store_u16 = _mem_access(types.uint16)
load_u32, store_u32 = _mem_access(types.uint32)
load_u64, store_u64 = _mem_access(types.uint64)

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
