"""Shared fixtures: tiny configs on the generated ``toy`` dataset (seconds on CPU)."""

from __future__ import annotations

import pytest
import torch

from haba_core.config import resolve_config

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TINY = [
    "data.name=toy",
    "net.width=16",
    "method.batch_real=16",
    "haba.extractor_width=16",
    "haba.batch=32",
    "iterations=4",
    "synset.budget_ipc=2",
    "synset.n_hallucinators=2",
    "snapshot_every=2",
    "checkpoint_every=2",
    "eval.epochs=3",
    "eval.seeds=1",
    "eval.test_batch=200",
]


def tiny_config(*overrides: str):
    """A seconds-long run on toy data; later overrides win."""
    return resolve_config(overrides=TINY + list(overrides))


def distill_command(run, iterations: int, synset: str, *extra: str, sets: tuple[str, ...] = ()) -> list[str]:
    """``python -m haba_core distill`` on toy data as a subprocess argument list (``sets``: ``--set`` values)."""
    import sys

    args = [sys.executable, "-m", "haba_core", "distill", "--run-dir", str(run), "--quiet",
            "--iterations", str(iterations), "--synset", synset, *extra]  # fmt: skip
    for s in ("data.name=toy", "net.width=16", *sets):
        args += ["--set", s]
    return args


@pytest.fixture
def toy():
    from haba_core.data import load_dataset

    return load_dataset("toy")
