"""The machine's limit, measured where it is used: how many FLOP/s this process's threads get from the kernels our
steps are made of, float32 and bf16. A step's share of peak (``bench.peer_speed``) is its achieved FLOP/s over the
fastest of these (``attainable``): the large matrix product, the large convolution, and each ConvNet-128 layer's
forward and gradient convolutions (a smaller convolution can run faster than the large one, and the first layer,
with 3 input channels, much slower)."""

from __future__ import annotations

import statistics
import time

import torch


def _median_time(fn, reps: int) -> float:
    fn()  # warm-up (oneDNN picks its kernel)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def attainable_peak(reps: int = 5, n: int = 4096) -> dict:
    """FLOP/s of an ``n x n`` matrix product and of a ConvNet-128 middle convolution (256 x 128 x 16 x 16, 3x3,
    padding 1, channels-last), float32 and bf16, at this process's thread count: the most this machine's kernels
    give for the work our steps are made of."""
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
        mm = _median_time(lambda a=a, b=b: torch.mm(a, b), reps)
        x = torch.randn(256, 128, 16, 16, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            conv = _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), reps)
        out[name] = {
            "matmul_flops_s": 2 * n**3 / mm,
            "conv_flops_s": 2 * 256 * 16 * 16 * 128 * 128 * 9 / conv,
        }
        out[name]["peak_flops_s"] = max(out[name]["matmul_flops_s"], out[name]["conv_flops_s"])
    return out


# the convolutions of a ConvNet-128 (depth 3) on 3x32x32 images: (in channels, map size); MTT's unrolled student
# trains on batch_syn = 100 images a step
CONVNET_LAYERS = ((3, 32), (128, 16), (128, 8))


def conv_kernel_rates(batch: int = 100, reps: int = 5, layers=CONVNET_LAYERS) -> dict:
    """FLOP/s of the three convolution kernels a training step runs (forward, input gradient, weight gradient) at
    each ConvNet-128 layer's shape, channels-last, float32 and bf16, at this process's thread count: what the
    convolutions of an MTT unroll can reach on this machine, layer by layer."""
    out: dict = {}
    g = torch.Generator().manual_seed(0)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for c_in, size in layers:
            cl = torch.channels_last
            x = torch.randn(batch, c_in, size, size, generator=g).to(dtype).contiguous(memory_format=cl)
            w = torch.randn(128, c_in, 3, 3, generator=g).to(dtype).contiguous(memory_format=cl)
            y = torch.randn(batch, 128, size, size, generator=g).to(dtype).contiguous(memory_format=cl)
            flops = 2 * batch * size * size * 128 * c_in * 9

            def backward(mask, x=x, w=w, y=y):
                return torch.ops.aten.convolution_backward(
                    y, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, mask
                )

            with torch.no_grad():
                times = {
                    "forward": _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), reps),
                    "input_grad": _median_time(lambda: backward([True, False, False]), reps),
                    "weight_grad": _median_time(lambda: backward([False, True, False]), reps),
                }
            out[f"{name} {c_in}->128 @{size}x{size}"] = {k: flops / t for k, t in times.items()}
    return out


def attainable(res: dict, precision: str) -> float:
    """The most FLOP/s any kernel measured in the run reached in ``precision``: the large matrix product, the large
    convolution, and each layer's forward and gradient convolutions (a smaller convolution can run faster than the
    large one)."""
    rates = [res["peak"][precision]["matmul_flops_s"], res["peak"][precision]["conv_flops_s"]]
    for layer, r in (res.get("conv_kernels") or {}).items():
        if layer.split()[0] == precision:
            rates += list(r.values())
    return max(rates)
