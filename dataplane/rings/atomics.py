"""Atomic memory operations on shared memory, as numba intrinsics.

Plain loads in a numba spin loop are hoisted out of the loop by LLVM and
never see the peer's store (DESIGN.md §5).  Every index that another process
writes must be read with :func:`load_acquire` and published with
:func:`store_release`.  On x86 those cost the same as plain accesses;
:func:`cas` and :func:`fetch_add` are locked instructions (~5 ns).

Each function takes a 1-d (or n-d, C-contiguous) numpy integer array and an
element index, so the same code works over any view of shared memory.  The
element must be naturally aligned (numpy views of our segments are).

All functions are usable from numba-compiled code (including ``cache=True``
functions) and from plain Python (through small jitted wrappers).
"""

from __future__ import annotations

import llvmlite.binding as _llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "load_acquire",
    "load_relaxed",
    "store_release",
    "store_relaxed",
    "fence",
    "cas",
    "fetch_add",
    "fetch_or",
    "exchange",
    "cpu_relax",
    "py_load_acquire",
    "py_store_release",
    "py_cas",
    "py_fetch_add",
]


# Inline asm (``pause``) needs the native asm parser registered first.
_llvm.initialize_native_asmparser()


def _check_array(ary):
    if not isinstance(ary, types.Array) or not isinstance(ary.dtype, types.Integer):
        raise TypeError(f"atomics need an integer array, got {ary}")


def _elem_ptr(context, builder, aryty, ary, idx, idxty):
    array = context.make_array(aryty)(context, builder, ary)
    idx = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, array, [idx], wraparound=False)


def _align(aryty):
    return aryty.dtype.bitwidth // 8


def _load(ordering):
    @intrinsic
    def _intr(typingctx, ary, idx):
        _check_array(ary)

        def codegen(context, builder, sig, args):
            ptr = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            return builder.load_atomic(ptr, ordering, _align(sig.args[0]))

        return ary.dtype(ary, idx), codegen

    return _intr


def _store(ordering):
    @intrinsic
    def _intr(typingctx, ary, idx, val):
        _check_array(ary)

        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ptr = _elem_ptr(context, builder, aryty, args[0], args[1], sig.args[1])
            v = context.cast(builder, args[2], sig.args[2], aryty.dtype)
            builder.store_atomic(v, ptr, ordering, _align(aryty))
            return context.get_dummy_value()

        return types.void(ary, idx, val), codegen

    return _intr


load_acquire = _load("acquire")
load_relaxed = _load("monotonic")
store_release = _store("release")
store_relaxed = _store("monotonic")


@intrinsic
def fence(typingctx):
    """Full (sequentially consistent) memory fence."""

    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def cas(typingctx, ary, idx, expected, desired):
    """Compare-and-swap ``ary[idx]``: returns True when it held ``expected``."""
    _check_array(ary)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ptr = _elem_ptr(context, builder, aryty, args[0], args[1], sig.args[1])
        exp = context.cast(builder, args[2], sig.args[2], aryty.dtype)
        des = context.cast(builder, args[3], sig.args[3], aryty.dtype)
        res = builder.cmpxchg(ptr, exp, des, "acq_rel", "acquire")
        return builder.extract_value(res, 1)

    return types.boolean(ary, idx, expected, desired), codegen


def _rmw(op):
    @intrinsic
    def _intr(typingctx, ary, idx, val):
        _check_array(ary)

        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ptr = _elem_ptr(context, builder, aryty, args[0], args[1], sig.args[1])
            v = context.cast(builder, args[2], sig.args[2], aryty.dtype)
            return builder.atomic_rmw(op, ptr, v, "acq_rel")

        return ary.dtype(ary, idx, val), codegen

    return _intr


fetch_add = _rmw("add")  # returns the old value
fetch_or = _rmw("or")  # returns the old value (the dirty log's page bits)
exchange = _rmw("xchg")  # returns the old value


@intrinsic
def cpu_relax(typingctx):
    """The x86 ``pause`` hint for spin loops (a no-op elsewhere)."""

    def codegen(context, builder, sig, args):
        import platform

        if platform.machine() in ("x86_64", "AMD64", "i686"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.asm(fnty, "pause", "~{memory}", [], True)
        return context.get_dummy_value()

    return types.void(), codegen


# Plain-Python entry points (control plane, tests).
@njit(cache=True)
def py_load_acquire(ary, idx):
    return load_acquire(ary, idx)


@njit(cache=True)
def py_store_release(ary, idx, val):
    store_release(ary, idx, val)


@njit(cache=True)
def py_cas(ary, idx, expected, desired):
    return cas(ary, idx, expected, desired)


@njit(cache=True)
def py_fetch_add(ary, idx, val):
    return fetch_add(ary, idx, val)
