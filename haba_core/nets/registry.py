"""The ``net`` registry and its ``create_net`` / ``list_nets`` front door (timm's ``create_model`` pattern).

Every factory takes ``(channels, num_classes, im_size, **options)``; variants are options
(``create_net("convnet", 1, 10, 28, width=64, norm="batchnorm")``), never extra names.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from haba_core.errors import ConfigError, did_you_mean
from haba_core.nets.layers import as_hw
from haba_core.registry import Registry

NETS: Registry = Registry("net")

_POSITIONAL = ("self", "channels", "num_classes", "im_size")


def net_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults, e.g. ``{"width": 128, "depth": 3, ...}``."""
    params = inspect.signature(NETS.get(name)).parameters
    return {k: p.default for k, p in params.items() if k not in _POSITIONAL and p.kind is p.POSITIONAL_OR_KEYWORD}


def create_net(name: str, channels: int, num_classes: int, im_size: int | tuple[int, int], **kwargs: Any) -> nn.Module:
    """A freshly initialised ``name`` for (B, channels, H, W) inputs and ``num_classes`` logits.

    Initialisation draws from the global RNG (PyTorch defaults), so ``torch.manual_seed(s)`` before the call
    makes it reproducible. The module stays on the CPU: the caller picks the device.
    """
    options = net_options(name)
    for k in kwargs:
        if k not in options:
            hint = did_you_mean(k, options)
            raise ConfigError(f"Unknown option {k!r} for net {name!r}.{hint} Valid: {', '.join(options) or 'none'}.")
    return NETS.get(name)(int(channels), int(num_classes), as_hw(im_size), **kwargs)


def list_nets() -> list[str]:
    """Registered architecture names, sorted."""
    return NETS.list()
