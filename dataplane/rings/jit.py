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

Contexts as rows, calls through addresses
-----------------------------------------
:func:`describe` turns a namedtuple of arrays into a row of words, :func:`row_reader` makes the
intrinsic that rebuilds it inside a kernel, and :func:`call_entry` calls a kernel through the
address :func:`entry_address` gives: the callee's code is not linked into the caller (see the
section at the end of this module).

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
    "row_words",
    "describe",
    "row_reader",
    "call_entry",
    "call_entry8",
    "entry_address",
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


# =============================================================================
# contexts as rows of words, and calls through an address (the forwarding loop's ports)
# =============================================================================
#
# A forwarding loop that takes its port queues as numba values (namedtuples of ~70 arrays, in a
# tuple per stream) has a type that depends on how many there are, and a body that moves all of
# them around (a run-time index into a tuple copies every word of the selected entry).  Instead
# the loop takes each context as a *row* of uint64 words (:func:`describe`), one type for any
# kind and any count, and rebuilds the namedtuple where it is used (:func:`row_reader`: loads,
# no copy of the arrays' contents).  And it calls the per-burst port kernels through their
# addresses (:func:`call_entry`, :func:`entry_address`): their code is not linked into the loop,
# so numba and LLVM compile each of them once, not again as part of every caller.


def _row_leaves(t):
    """The leaves of numba type ``t`` (a tuple / namedtuple of arrays and integers), in order."""
    if isinstance(t, types.BaseTuple):
        for sub in t.types:
            yield from _row_leaves(sub)
    elif isinstance(t, (types.Array, types.Integer)):
        yield t
    else:
        raise TypeError(f"a context row holds arrays and integers, not {t}")


def row_words(t) -> int:
    """Words of a row describing a value of numba type ``t``: per array its data address,
    itemsize, shape and strides; per integer one word."""
    return sum(2 + 2 * leaf.ndim if isinstance(leaf, types.Array) else 1 for leaf in _row_leaves(t))


def describe(value, out=None):
    """The row of ``value`` (a namedtuple / tuple of arrays and integers) as a uint64 array (or
    written into ``out``).  The arrays must outlive every use of the row: keep ``value``."""
    import numpy as np

    words: list[int] = []

    def walk(v):
        if isinstance(v, tuple):
            for sub in v:
                walk(sub)
        elif isinstance(v, np.ndarray):
            words.extend((v.ctypes.data, v.itemsize, *v.shape, *v.strides))
        else:
            words.append(int(v) & 0xFFFFFFFFFFFFFFFF)

    walk(value)
    if out is None:
        return np.array(words, np.uint64)
    out[: len(words)] = words
    return out


def row_reader(type_fn):
    """An intrinsic ``read(row) -> value`` rebuilding a value of numba type ``type_fn()`` from its
    :func:`describe` row (a uint64 array).  ``type_fn`` is called when a caller is typed, so
    building the type (dummy contexts) costs nothing at import."""

    @intrinsic
    def read(typingctx, row):
        if not (isinstance(row, types.Array) and row.dtype == types.uint64 and row.ndim == 1):
            return None
        t = type_fn()

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            base = context.make_array(sig.args[0])(context, builder, args[0]).data
            pos = [0]

            def word():
                v = builder.load(builder.gep(base, [ir.Constant(i64, pos[0])]))
                pos[0] += 1
                return v

            def build(ty):
                if isinstance(ty, types.BaseTuple):
                    return context.make_tuple(builder, ty, [build(sub) for sub in ty.types])
                if isinstance(ty, types.Array):
                    ary = context.make_array(ty)(context, builder)
                    data = builder.inttoptr(word(), ary.data.type)
                    itemsize = word()
                    shape = [word() for _ in range(ty.ndim)]
                    strides = [word() for _ in range(ty.ndim)]
                    context.populate_array(ary, data=data, shape=shape, strides=strides, itemsize=itemsize,
                                           meminfo=None)
                    return ary._getvalue()
                return context.cast(builder, word(), types.uint64, ty)

            return build(t)

        return t(row), codegen

    return read


def _call_through_address(context, builder, sig, args):
    """The codegen of :func:`call_entry` / :func:`call_entry8`: call ``args[0]`` as a C function
    of the other arguments' LLVM types, returning an int64."""
    fnty = ir.FunctionType(context.get_value_type(types.int64), [context.get_value_type(t) for t in sig.args[1:]])
    fn = builder.inttoptr(args[0], fnty.as_pointer())
    return builder.call(fn, args[1:])


@intrinsic
def call_entry(typingctx, addr, a, b, c, d, e):
    """Call the C wrapper of a compiled kernel at ``addr`` (:func:`entry_address`) with five
    arguments; it returns an int64.  The kernel must have been compiled for exactly these
    argument types (numba values passed as LLVM values): :func:`entry_address` does that."""
    if not isinstance(addr, types.Integer):
        return None
    sig = types.int64(addr, a, b, c, d, e)

    return sig, _call_through_address


@intrinsic
def call_entry8(typingctx, addr, a, b, c, d, e, f, g, h):
    """:func:`call_entry` with eight arguments."""
    if not isinstance(addr, types.Integer):
        return None
    sig = types.int64(addr, a, b, c, d, e, f, g, h)

    return sig, _call_through_address


def entry_address(dispatcher, argtypes) -> int:
    """Compile (or load from the cache) ``dispatcher`` for ``argtypes`` returning int64, and return
    the address of its C wrapper, for :func:`call_entry` (valid in this process only)."""
    sig = types.int64(*argtypes)
    dispatcher.compile(sig)
    cres = dispatcher.overloads[tuple(argtypes)]
    addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
    if not addr:
        raise RuntimeError(f"no C wrapper for {dispatcher.py_func.__qualname__}{tuple(argtypes)}")
    return addr
