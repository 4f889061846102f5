"""bfloat16 arithmetic on a CPU that lacks it.

Under ``torch.autocast(dtype=bfloat16)`` the matrix products and convolutions take bf16 operands and return bf16
results. A CPU with AVX512-BF16 or AMX runs them in oneDNN, which multiplies the bf16 operands and accumulates in
float32, rounding once to bf16 at the end. Elsewhere (an AVX2-only CPU) ATen falls back to its own bf16 kernels,
which are many times slower than float32 (``python -m bench.bf16_check`` times a training step), and whose
convolution backward rounds as it goes, so most of its gradient entries differ from the exactly rounded ones
(``tests/test_bf16.py``).

:class:`EmulatedBf16` computes those operations the way the native kernels do, at float32's speed: the bf16
operands are widened to float32 (exactly), the operation runs in float32, and the result is rounded to bf16.
Only the order of summation inside a dot product can differ from a native machine's, as it already differs
between AVX512-BF16 and AMX. Everything else (normalization, activations, pooling, losses) runs on bf16 tensors
in ATen as on any machine.

It is a dispatch mode, so it sees the backward pass's convolutions too; since a backward pass runs after the
forward's autocast context has closed, :func:`ensure_bf16_arithmetic` installs it in the calling thread for the
thread's life (``training.autocast`` calls it at each bf16 forward pass), beneath any mode already active, so a
mode that watches operations (a test's, a FLOP counter) sees the bf16 ones a native CPU runs. It touches only
operations whose floating-point tensors are all bf16, so float32 work in the same thread is unchanged. Under it
``torch.compile`` captures nothing: emulated runs are eager.
"""

from __future__ import annotations

import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode, _push_mode
from torch.utils._pytree import tree_leaves, tree_map

_aten = torch.ops.aten
# the operations autocast runs in bf16 that reach the dispatcher (linear and matmul decompose into these)
MATRIX_OPS = frozenset(
    {
        _aten.convolution.default,
        _aten.convolution_backward.default,
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten.baddbmm.default,
    }
)


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 matrix products natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_arithmetic(device: torch.device | str) -> str:
    """How ``device`` computes bf16 matrix products: ``"native"`` (a CUDA GPU that supports it, a CPU with
    AVX512-BF16 or AMX), ``"emulated"`` (a CPU without: :class:`EmulatedBf16`) or ``"unsupported"`` (older GPUs)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "native" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "unsupported"
    return "native" if native_bf16_cpu() else "emulated"


def _widen(a):
    return a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a


def _round(a):
    return a.bfloat16() if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a


class EmulatedBf16(TorchDispatchMode):
    """Matrix products and convolutions of bf16 CPU tensors computed in float32 and rounded to bf16."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0  # operations it computed (the tests check that it saw the forward and backward ones)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATRIX_OPS:
            floats = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if floats and all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in floats):
                self.calls += 1
                return tree_map(_round, func(*tree_map(_widen, args), **tree_map(_widen, kwargs)))
        return func(*args, **kwargs)


_installed = threading.local()


def ensure_bf16_arithmetic(device: torch.device | str) -> EmulatedBf16 | None:
    """Install :class:`EmulatedBf16` in this thread (once) when ``device`` is a CPU without native bf16; returns
    the installed mode, or None where the device computes bf16 itself."""
    if torch.device(device).type != "cpu":
        return None
    mode = getattr(_installed, "mode", None)
    if mode is None and not native_bf16_cpu():
        mode = _installed.mode = EmulatedBf16()
        above = [_pop_mode() for _ in range(torch._C._len_torch_dispatch_stack())]
        _push_mode(mode)  # beneath the modes already active, which then see the bf16 operations
        for m in reversed(above):
            _push_mode(m)
    return mode


def uninstall() -> None:
    """Remove this thread's :class:`EmulatedBf16` (tests use it to leave the thread as they found it)."""
    mode = getattr(_installed, "mode", None)
    if mode is not None:
        above = [_pop_mode() for _ in range(torch._C._len_torch_dispatch_stack())]
        for m in reversed(above):
            if m is not mode:
                _push_mode(m)
        _installed.mode = None
