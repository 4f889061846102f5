"""Reading expert trajectories: their metadata, an :class:`ExpertSet` that MTT samples from (checked against
the distillation's data and network), and synthetic experts for tests and profiling. Training them is
``haba_core.methods.experts``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from haba_core import io
from haba_core.errors import CheckpointError, ConfigError
from haba_core.methods.experts import (
    EXPERT_FORMAT,
    EXPERT_VERSION,
    ExpertConfig,
    _expert_meta,
    expert_path,
    flat_params,
    write_manifest,
)


def read_expert_meta(path: str | Path) -> dict:
    """The JSON metadata of an expert file, checking its format and version (no tensor is read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("haba")
            keys = set(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is corrupted or foreign.") from e
    meta = json.loads(raw) if raw else None
    if not isinstance(meta, dict) or meta.get("format") != EXPERT_FORMAT or "trajectory" not in keys:
        found = meta.get("format") if isinstance(meta, dict) else "no haba metadata"
        raise CheckpointError(
            f"{path} is not an expert trajectory (it holds {found!r}); pass a folder made by "
            "`python -m haba_core experts`."
        )
    if int(meta.get("version", 0)) > EXPERT_VERSION:
        raise CheckpointError(
            f"{path} has expert format version {meta['version']}, newer than this haba_core "
            f"({EXPERT_VERSION}); upgrade haba_core."
        )
    return meta


class ExpertSet:
    """The finished experts of a folder; reads single epochs lazily (``safe_open`` slices, not whole files)."""

    def __init__(self, folder: str | Path, max_experts: int | None = None, hint: str = ""):
        self.folder = Path(folder)
        how = f" Make experts first: {hint}" if hint else " Make experts first with `python -m haba_core experts`."
        if not self.folder.is_dir():
            raise ConfigError(f"Expert folder {self.folder} does not exist.{how}")
        paths = sorted(
            p for p in self.folder.glob("expert_*.safetensors") if not p.name.endswith(".partial.safetensors")
        )
        if max_experts is not None:
            paths = paths[:max_experts]
        if not paths:
            partial = list(self.folder.glob("expert_*.partial.safetensors"))
            extra = (
                f" ({len(partial)} unfinished: run the same experts command again to finish them)" if partial else ""
            )
            raise ConfigError(f"Expert folder {self.folder} holds no finished expert trajectories{extra}.{how}")
        self.paths = paths
        self.metas = [read_expert_meta(p) for p in paths]
        first = self.metas[0]
        for p, m in zip(paths[1:], self.metas[1:], strict=True):
            for k in ("param_shapes", "dataset", "net", "epochs"):
                if m.get(k) != first.get(k):
                    raise CheckpointError(f"{p} differs from {paths[0]} in {k}; an expert folder holds one recipe.")
        self.meta = first

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    def rows(self, k: int, epochs: list[int], device: torch.device | str = "cpu") -> Tensor:
        """Parameters of expert ``k`` after each of ``epochs``: (len(epochs), P) float32."""
        with safe_open(str(self.paths[k]), framework="pt") as f:
            sl = f.get_slice("trajectory")
            out = torch.stack([sl[e : e + 1][0] for e in epochs])
        return out.to(device)

    def trajectory(self, k: int) -> Tensor:
        """The whole trajectory of expert ``k``: (E+1, P)."""
        with safe_open(str(self.paths[k]), framework="pt") as f:
            return f.get_tensor("trajectory")

    def check_compatible(self, info, net: nn.Module, net_name: str, net_params: dict) -> None:
        """Raise a clear error unless these experts fit a distillation on ``info`` with ``net``."""
        m = self.meta
        d = m["dataset"]
        problems = []
        for key, mine in (
            ("name", info.name),
            ("channels", info.channels),
            ("num_classes", info.num_classes),
            ("im_size", list(info.im_size)),
            ("zca", bool(info.zca)),
        ):
            theirs = d.get(key)
            if (list(theirs) if isinstance(theirs, (list, tuple)) else theirs) != mine:
                problems.append(f"dataset {key} {theirs!r} (run: {mine!r})")
        shapes = [list(p.shape) for p in net.parameters()]
        if shapes != m["param_shapes"]:
            problems.append(
                f"net {m['net']['name']} {m['net']['params']} (run: {net_name} {net_params}; parameter shapes differ)"
            )
        if problems:
            raise ConfigError(
                f"The experts in {self.folder} do not fit this run: they were trained with "
                + "; ".join(problems)
                + ". Make matching experts (same dataset, zca and net.*) or point method.expert_dir elsewhere."
            )


def write_synthetic_experts(
    out: str | Path, cfg: ExpertConfig, info, num_experts: int = 1, step: float = 0.01, seed: int = 0
) -> list[Path]:
    """Expert files whose trajectories are *not trained*: a real initialisation followed by random steps
    (``theta_{e+1} = theta_e + step * |theta_0|_rms * noise``). Random but consistent parameters in the real
    format, for timing the MTT step (``bench/profile_mtt.py``) and for tests; never for distillation."""
    from haba_core.nets import create_net

    write_manifest(out, cfg)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(num_experts):
        torch.manual_seed(seed + i)
        net = create_net(cfg.net_name, info.channels, info.num_classes, info.im_size, **cfg.net_params)
        theta = flat_params(net)
        scale = step * theta.pow(2).mean().sqrt()
        rows = [theta]
        for _ in range(cfg.epochs):
            rows.append(rows[-1] + scale * torch.randn(theta.shape, generator=g))
        meta = {
            **_expert_meta(cfg, i, info, net),
            "complete": True,
            "synthetic": True,
            "train_acc": [None] * cfg.epochs,
        }
        io.save_tensors(expert_path(out, i), {"trajectory": torch.stack(rows)}, meta)
        paths.append(expert_path(out, i))
    return paths
