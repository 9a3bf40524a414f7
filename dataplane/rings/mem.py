"""Raw-memory intrinsics: loads, stores, byte order, copies and prefetches at integer addresses.

This is the core layer with :mod:`dataplane.rings.jit` and
:mod:`dataplane.rings.atomics`: it imports nothing of dataplane but
``jit``, and everything that touches packet or guest memory by address (the
virtqueue kernels, mbuf data, packet headers, checksums) uses these helpers.
All are cacheable and NRT-free; ordering between processes comes from the
caller's acquire/release operations (:mod:`~dataplane.rings.atomics`).

Element access
--------------
:func:`load_u16` / :func:`load_u32` / :func:`load_u64` ``(addr, idx)`` and
:func:`store_u16` / :func:`store_u32` / :func:`store_u64` ``(addr, idx, val)``:
plain (non-atomic) access to element ``idx`` of the array of that width
starting at integer address ``addr`` (``addr + idx * size``), with
``align 1`` so an unaligned address is safe.  For memory found at run time
(indirect tables in guest memory): without NRT a kernel cannot build an
array view (``carray``) of it.

Byte access
-----------
:func:`ld8` ... :func:`ld64` ``(addr)`` and :func:`st8` ... :func:`st64`
``(addr, val)``: the same at one address; :func:`be16` / :func:`be32` read
and :func:`st_be16` / :func:`st_be32` write network byte order
(:func:`bswap16`, :func:`bswap32`).

Copies and prefetches
---------------------
:func:`memcpy` is ``llvm.memcpy`` between addresses; :func:`copy_bytes`
copies small lengths as inline 8-byte words and calls :func:`memcpy` above
64 bytes (DESIGN §5: copies must vectorise).  :func:`prefetch` /
:func:`prefetchw` are ``llvm.prefetch`` for reading / for writing.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from dataplane.rings.jit import inline_kernel

__all__ = [
    "load_u16",
    "load_u32",
    "load_u64",
    "store_u16",
    "store_u32",
    "store_u64",
    "ld8",
    "ld16",
    "ld32",
    "ld64",
    "st8",
    "st16",
    "st32",
    "st64",
    "bswap16",
    "bswap32",
    "be16",
    "be32",
    "st_be16",
    "st_be32",
    "memcpy",
    "copy_bytes",
    "prefetch",
    "prefetchw",
]

_U64 = np.uint64


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


def _mem_access_u8():
    @intrinsic
    def _load(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            a = context.cast(builder, args[0], sig.args[0], types.uint64)
            return builder.load(builder.inttoptr(a, ir.IntType(8).as_pointer()), align=1)

        return types.uint8(addr), codegen

    @intrinsic
    def _store(typingctx, addr, val):
        if not isinstance(addr, types.Integer) or not isinstance(val, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            a = context.cast(builder, args[0], sig.args[0], types.uint64)
            v = context.cast(builder, args[1], sig.args[1], types.uint8)
            builder.store(v, builder.inttoptr(a, ir.IntType(8).as_pointer()), align=1)
            return context.get_dummy_value()

        return types.void(addr, val), codegen

    return _load, _store


ld8, st8 = _mem_access_u8()


@inline_kernel
def ld16(addr):
    return load_u16(addr, 0)


@inline_kernel
def ld32(addr):
    return load_u32(addr, 0)


@inline_kernel
def ld64(addr):
    return load_u64(addr, 0)


@inline_kernel
def st16(addr, v):
    store_u16(addr, 0, v)


@inline_kernel
def st32(addr, v):
    store_u32(addr, 0, v)


@inline_kernel
def st64(addr, v):
    store_u64(addr, 0, v)


# -- byte order ---------------------------------------------------------------


@inline_kernel
def bswap16(v):
    v = np.int64(v) & 0xFFFF
    return ((v & 0xFF) << 8) | (v >> 8)


@inline_kernel
def bswap32(v):
    v = np.int64(v) & 0xFFFFFFFF
    return ((v & 0xFF) << 24) | ((v & 0xFF00) << 8) | ((v >> 8) & 0xFF00) | (v >> 24)


@inline_kernel
def be16(addr):
    """Big-endian u16 at a host address (as int64)."""
    return bswap16(ld16(addr))


@inline_kernel
def be32(addr):
    """Big-endian u32 at a host address (as int64)."""
    return bswap32(ld32(addr))


@inline_kernel
def st_be16(addr, v):
    """Store ``v`` as a big-endian u16."""
    st16(addr, bswap16(v))


@inline_kernel
def st_be32(addr, v):
    """Store ``v`` as a big-endian u32."""
    st32(addr, bswap32(v))


# -- copies -------------------------------------------------------------------


@intrinsic
def memcpy(typingctx, dst, src, n):
    """``llvm.memcpy(dst, src, n)`` between integer addresses (must not overlap)."""
    if not all(isinstance(a, types.Integer) for a in (dst, src, n)):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        d = builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.uint64), i8p)
        s = builder.inttoptr(context.cast(builder, args[1], sig.args[1], types.uint64), i8p)
        k = context.cast(builder, args[2], sig.args[2], types.uint64)
        cgutils.raw_memcpy(builder, d, s, k, 1)
        return context.get_dummy_value()

    return types.void(dst, src, n), codegen


@inline_kernel
def copy_bytes(dst, src, n):
    """Copy ``n`` bytes between host addresses: 8-byte words inline up to 64 bytes, memcpy above."""
    n = _U64(n)
    if n <= _U64(64):
        k = _U64(0)
        while k + _U64(8) <= n:
            st64(dst + k, ld64(src + k))
            k += _U64(8)
        while k < n:
            st8(dst + k, ld8(src + k))
            k += _U64(1)
    else:
        memcpy(dst, src, n)


# -- prefetch -----------------------------------------------------------------


def _prefetch_intrinsic(rw):
    @intrinsic
    def _pf(typingctx, addr):
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            ptr = builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.uint64), i8p)
            builder.call(fn, [ptr, i32(rw), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(addr), codegen

    return _pf


prefetch = _prefetch_intrinsic(0)  # llvm.prefetch for reading, all cache levels (prefetcht0)
prefetchw = _prefetch_intrinsic(1)  # ... for writing (prefetchw: fetch the line exclusive)
