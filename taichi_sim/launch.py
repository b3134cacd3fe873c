"""A lighter launch of Taichi kernels whose arrays are torch tensors.

Taichi 1.7's ``kernel(*args)`` spends, on every call, about 0.1 ms looking the compiled kernel up
(a template key built from every argument, then the compile cache) and about 12 us per torch
argument (checks, a string of the device, numpy's int32 limit, a copy of the compile config). A
spring-mass substep launches two or three kernels of 15-20 arrays each, and a frame of the
authors' setting 100 to 200 substeps, so this overhead was more than the substep's arithmetic at
512 anchors x 64 springs and about a fifth of the simulation's time at 2048 x 256.

:func:`fast` wraps a ``@ti.kernel`` so that the first call with a new signature (each array's
dtype, dimensions, device and grad flag, and the template arguments' values) goes through Taichi's
own call, which compiles and launches it, and later calls with that signature set the arguments
of the kernel Taichi compiled directly and launch it. Anything the short path does not cover
(numpy or Taichi arrays, tensors on another device than the arch's, tensors that require grad)
takes Taichi's own call every time. Results are the same bit for bit (tests/test_launch.py); a
non-contiguous tensor is refused like Taichi refuses it.
"""
from __future__ import annotations

import torch
from taichi.lang import impl  # importing is not initialising: ti.init stays with the CLI and tests

from taichi_sim.errors import SgausError


class FastKernel:
    """``fast(kernel)(*args)``: the same as ``kernel(*args)``, with less work per call."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.primal = kernel._primal
        self.__name__ = getattr(kernel, "__name__", "kernel")
        self._compiled: dict = {}
        self._kinds: list | None = None  # per argument: "array", "template", "float", "int" or None
        self._prog = None  # the Taichi program the cache belongs to (ti.init makes a new one)
        self._cuda = False

    def _argument_kinds(self) -> list:
        from taichi.types import ndarray_type, primitive_types, template

        kinds = []
        for arg in self.primal.arguments:
            anno = arg.annotation
            if isinstance(anno, template):
                kinds.append("template")
            elif isinstance(anno, ndarray_type.NdarrayType) and anno.dtype is None:
                kinds.append("array")
            elif id(anno) in primitive_types.real_type_ids:
                kinds.append("float")
            elif id(anno) in primitive_types.integer_type_ids:
                kinds.append("int")
            else:
                kinds.append(None)
        return kinds

    def _signature(self, args) -> tuple | None:
        """The key of a compiled launch, or None where Taichi's own call must run."""
        key = []
        for a, kind in zip(args, self._kinds):
            if kind == "array":
                if type(a) is not torch.Tensor or a.requires_grad or a.is_cuda != self._cuda:
                    return None
                key.append((a.dtype, a.dim()))
            elif kind == "template":
                if not isinstance(a, (int, float, bool)):
                    return None
                key.append((type(a), a))
            elif kind in ("float", "int"):  # by type: a value Taichi would refuse goes to Taichi
                key.append(type(a))
            else:
                return None
        return tuple(key)

    def __call__(self, *args):
        runtime = impl.get_runtime()
        if runtime.prog is not self._prog:  # first call, or ti.init since: Taichi compiles anew
            self._compiled.clear()
            self._kinds = self._argument_kinds()
            self._cuda = impl.current_cfg().arch.name == "cuda"
            self._prog = runtime.prog
        if len(args) != len(self._kinds):
            return self.kernel(*args)  # Taichi names the mismatch
        key = self._signature(args)
        entry = self._compiled.get(key) if key is not None else None
        if entry is None:
            out = self.kernel(*args)
            if key is not None:
                self._compiled[key] = self._lookup(args)
            return out
        t_kernel, compiled = entry
        ctx = t_kernel.make_launch_context()
        slot = 0
        for a, kind in zip(args, self._kinds):
            if kind == "template":
                continue
            if kind == "array":
                if not a.is_contiguous():
                    raise SgausError(f"{self.__name__}: argument {slot} is not a contiguous tensor")
                ctx.set_arg_external_array_with_shape((slot,), a.data_ptr(), a.element_size() * a.nelement(),
                                                      tuple(a.shape), 0)
            elif kind == "float":
                ctx.set_arg_float((slot,), float(a))
            else:
                ctx.set_arg_int((slot,), int(a))
            slot += 1
        self._prog.launch_kernel(compiled, ctx)
        return None

    def _lookup(self, args):
        """The kernel Taichi compiled for these arguments (its own call has just run) and its
        compiled form in the current program."""
        instance_id, _ = self.primal.mapper.lookup(args)
        t_kernel = self.primal.compiled_kernels[(self.primal.func, instance_id, self.primal.autodiff_mode)]
        prog = self._prog
        return t_kernel, prog.compile_kernel(prog.config(), prog.get_device_caps(), t_kernel)


def fast(kernel) -> FastKernel:
    """Wrap a ``@ti.kernel`` (module level, returning nothing) for :class:`FastKernel`'s launch."""
    return FastKernel(kernel)
