"""The distillation loop: build everything from a RunConfig, step the method, and keep the run folder.

One ``Distiller`` owns the optimizers, HaBa's adversarial step, the RNG state, checkpoints and resume.
Callbacks (``on_start``, ``on_step``, ``on_eval``, ``on_snapshot``, ``on_end``) observe it; the run folder
is one such subscriber. Seeding happens once here: ``cfg.seed`` seeds the global torch RNG (network inits)
and one ``torch.Generator`` that every sampler receives; both are saved in each checkpoint, so a resumed
run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import dataclasses
import signal
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from haba_core import io
from haba_core import runfolder as RF
from haba_core.budget import lr_note, plan_from_config
from haba_core.callbacks import Callback
from haba_core.config import RunConfig
from haba_core.data import dataset_from_config
from haba_core.devices import peak_memory_mb, reset_peak_memory, resolve_device
from haba_core.errors import CheckpointError, ConfigError, DiskError, HabaError
from haba_core.evaluate import evaluate_synset
from haba_core.haba_losses import ContrastiveConstraint
from haba_core.loggers import create_sinks
from haba_core.memory import reuse_freed_memory
from haba_core.methods import METHODS, Context, create_method
from haba_core.nets import NETS
from haba_core.preflight import preflight
from haba_core.synsets import SYNSETS, create_synset

CHECKPOINT_FORMAT = "haba-checkpoint"


class Cancelled(HabaError):
    """Raised inside the loop when the run was asked to stop (SIGTERM/SIGINT)."""


class Distiller:
    """Builds and runs one distillation from a config. ``step`` counts completed outer iterations."""

    def __init__(self, cfg: RunConfig, callbacks: Iterable[Callback] = (), dataset=None):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.device)
        # validate names and hyperparameters before any data is loaded: bad input fails in milliseconds
        METHODS.get(cfg.method_name).make_config(cfg.method_params)
        kind = SYNSETS.get(cfg.synset.kind)
        NETS.get(cfg.net.get("name", "convnet"))
        self.run_dir = next((cb.path for cb in self.callbacks if isinstance(cb, RF.RunFolder)), None)
        if (cfg.eval_every or cfg.eval_at_end) and cfg.eval.split == "test" and self.run_dir is None:
            raise ConfigError(
                "Evaluating on the test split during a run is recorded in the run folder's test ledger: distill "
                "into a run folder (run_dir), or evaluate on eval.split=val."
            )
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        d = cfg.data
        self.dataset = dataset or dataset_from_config(d)
        self.dataset = self.dataset.to(self.device)
        info = self.dataset.info
        self.plan = plan_from_config(info, cfg.synset)
        # bounds from the data (batches clamped to a class) and the machine's memory, before anything large exists
        cfg, self.notes = preflight(cfg, self.dataset, self.plan, self.device, self.run_dir)
        chosen = kind.validated_lr(info, cfg.method_name, self.plan.budget_ipc)
        if cfg.synset.lr_hallucinators is None and chosen is not None:  # recorded with the run (config.json)
            cfg = cfg.replace(synset=dataclasses.replace(cfg.synset, lr_hallucinators=chosen[0]))
            self.notes.append(lr_note(kind, cfg.method_name, self.plan.budget_ipc, chosen))
        self.cfg = cfg
        s = cfg.synset
        kwargs: dict[str, Any] = {"n_bases": self.plan.n_bases, "basis_size": self.plan.basis_size}
        kwargs.update(kind.options_from(s))
        self.synset = create_synset(s.kind, info, generator=self.generator, **kwargs).to(self.device)
        if s.init == "real":
            self.synset.init_from_real(self.dataset, self.generator)
        elif s.init == "noise":
            self.synset.init_noise(self.generator)
        else:
            raise ConfigError(f"synset.init must be 'real' or 'noise', not {s.init!r}.")
        self.ctx = Context(
            dataset=self.dataset,
            device=self.device,
            dsa_strategy=cfg.dsa_strategy if cfg.dsa_strategy not in ("none",) else "",
            net_name=cfg.net.get("name", "convnet"),
            net_params=dict(cfg.net.get("params", {})),
            budget_images=self.plan.budget_images,
        )
        self.method = create_method(cfg.method_name, cfg.method_params, self.ctx)
        if self.device.type == "cpu" and self.method.reuse_memory:
            reuse_freed_memory()  # process-wide; a no-op under jemalloc, which haba distill runs under where installed
        self.method.setup(self.synset)
        resolved = {**cfg.method_params, **self.method.resolved_params()}
        if resolved != cfg.method_params:  # what the method derived is recorded with the run (config.json)
            self.cfg = cfg = cfg.replace(method={**cfg.method, "params": resolved})
        lr_i = s.lr_images if s.lr_images is not None else self.method.lr_img
        lr_h = s.lr_hallucinators if s.lr_hallucinators is not None else self.method.lr_hallucinators
        groups = self.synset.param_groups(lr_i, lr_h)
        if s.momentum_hallucinators is not None:
            for g in groups:
                if g["name"] == "hallucinators":
                    g["momentum"] = s.momentum_hallucinators
        self.optimizer = torch.optim.SGD(groups + self.method.param_groups(), lr=lr_i, momentum=self.method.momentum)
        use_constraint = kind.contrastive and cfg.haba.enabled and self.synset.n_variants >= 2
        self.constraint = (
            ContrastiveConstraint(cfg.haba, info, self.device, self.ctx.dsa_strategy) if use_constraint else None
        )
        self.step = 0
        self.step_times: list[float] = []
        self._stop = False

    # -- the optimization: the engine's ----------------------------------------------------------------------
    def iterate(self) -> dict[str, float]:
        """One outer iteration: apply :meth:`update` to every loss the method's step yields; its named losses."""
        step = self.method.step(self.synset, self.generator)
        try:
            loss = next(step)
            while True:
                loss = step.send(self.update(loss))
        except StopIteration as done:
            return done.value

    def update(self, loss: torch.Tensor) -> dict[str, float]:
        """One synthetic-set update from a method's loss: HaBa's constraint, backward, every optimizer step,
        the method's ``after_update`` hook and the extractor's adversarial step; returns their logs."""
        logs: dict[str, float] = {}
        if self.constraint is not None and self.cfg.haba.lambda_cos > 0:
            cos = self.constraint.synthetic_loss(self.synset, self.generator)
            loss = loss + cos
            logs["haba_cos"] = cos.item()
        if not torch.isfinite(loss):
            raise HabaError(
                f"The distillation loss became {loss.item()} at step {self.step}; lower the learning rates "
                "(method.lr_img, synset.lr_hallucinators) or resume from the last checkpoint."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.method.after_update()
        if self.constraint is not None:
            logs.update(self.constraint.update_extractor(self.synset, self.generator))
        return logs

    # -- the loop -----------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self) -> Distiller:
        """Run from ``self.step`` to ``cfg.iterations``; callbacks see every step."""
        cfg = self.cfg
        self._emit("on_start")
        state, error = "finished", None
        try:
            while self.step < cfg.iterations:
                if self._stop:
                    raise Cancelled("cancelled")
                reset_peak_memory(self.device)
                t0 = time.perf_counter()
                self.synset.train()
                losses = self.iterate()
                dt = time.perf_counter() - t0
                self.step_times.append(dt)
                self.step += 1
                logs = {"step": self.step, "time_s": dt, **peak_memory_mb(self.device), **losses}
                self._emit("on_step", self.step, logs)
                last = self.step == cfg.iterations
                if cfg.snapshot_every and (self.step % cfg.snapshot_every == 0 or last):
                    self._emit("on_snapshot", self.step)
                if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or last):
                    self._emit("on_checkpoint", self.step)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or (last and cfg.eval_at_end):
                    self._emit("on_eval", self.step, self.evaluate())
        except Cancelled:
            state = "cancelled"
            self._emit("on_checkpoint", self.step)
        except BaseException as e:  # recorded in the run folder, then re-raised
            state, error = "failed", RF.failure_text(self.run_dir, e, self.step)
            self._emit("on_end", state, error)
            if isinstance(e, DiskError):  # the command line prints what status.json says: how to go on
                raise DiskError(error) from e
            raise
        self._emit("on_end", state, error)
        return self

    def evaluate(self, nets: Iterable[str] | None = None, seeds: int | None = None, ecfg=None, ledger=None) -> dict:
        """Evaluate the current synthetic set under ``ecfg`` (an EvalConfig; default: the run's ``eval``); on the
        test split recorded through ``ledger`` (a ``LedgerEntry``; default: the run folder's test ledger)."""
        e = ecfg or self.cfg.eval
        ledger = ledger or (self.run_dir and RF.ledger_entry(self.run_dir, self.cfg.to_dict(), "in-run eval"))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation must not shift the run's RNG stream
            return evaluate_synset(
                self.synset,
                self.dataset,
                e,
                nets=tuple(nets or e.nets),
                seeds=seeds or e.seeds,
                lr=self.method.eval_lr(),
                dsa_strategy=self.ctx.dsa_strategy,
                seed=self.cfg.seed + 1000 * self.step,
                ledger=ledger,
            )

    def seconds_per_iteration(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "synset": self.synset.state_dict(),
            "synset_extra": dict(self.synset.extra),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.constraint is not None:
            state["constraint"] = self.constraint.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.synset.load_state_dict(state["synset"])
        self.synset.extra = dict(state.get("synset_extra") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(state["cuda_rng"]))
        if self.constraint is not None:
            self.constraint.load_state_dict(state["constraint"])
        self.step = int(state["step"])

    def save_checkpoint(self, path: str | Path) -> None:
        skeleton, tensors = io.flatten_state(self.state_dict())
        io.save_tensors(
            path,
            tensors,
            {
                "format": CHECKPOINT_FORMAT,
                "version": io.FORMAT_VERSION,
                "state": skeleton,
                "config": self.cfg.to_dict(),
            },
        )

    def load_checkpoint(self, path: str | Path) -> None:
        tensors, meta = io.load_tensors(path, expect_format=CHECKPOINT_FORMAT)
        try:
            self.load_state_dict(io.unflatten_state(meta["state"], tensors))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{path} does not fit this run's config ({e}). Resume with the config the run was started with."
            ) from e


class Progress(Callback):
    """tqdm progress bar with the latest losses."""

    def __init__(self) -> None:
        self.bar = None

    def on_start(self, d: Distiller) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=d.cfg.iterations, initial=d.step, desc="distill", dynamic_ncols=True)

    def on_step(self, d: Distiller, step: int, logs: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "haba_cos")})

    def on_eval(self, d: Distiller, step: int, results: dict) -> None:
        self.bar.write(f"step {step}: {results.get('summary', '')}")

    def on_end(self, d: Distiller, state: str, error: str | None) -> None:
        if self.bar is not None:
            self.bar.close()


def distill(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    callbacks: Iterable[Callback] = (),
    dataset=None,
    handle_signals: bool = False,
) -> Distiller:
    """Run a distillation, keeping ``run_dir`` when given. ``resume`` continues from its last checkpoint.

    With ``handle_signals`` (the CLI's choice), SIGTERM/SIGINT stop the run between iterations, write a
    checkpoint and mark it ``cancelled``; library callers keep their own signal handling.
    """
    cbs = list(callbacks)
    folder = None
    if run_dir is not None:
        folder = RF.RunFolder(run_dir)
        if resume:
            cfg_path = folder.path / RF.CONFIG
            if not cfg_path.exists():
                raise CheckpointError(f"{folder.path} holds no run to resume (no config.json).")
            saved = RunConfig.from_dict(io.read_json_strict(cfg_path))
            if cfg is not None:  # only how far, on what, where from and where else it logs may change
                data = dataclasses.replace(saved.data, root=cfg.data.root, root_only=cfg.data.root_only)
                saved = saved.replace(iterations=cfg.iterations, device=cfg.device, data=data, loggers=cfg.loggers)
            cfg = saved
        elif RF.is_prepared(folder.path):  # a front end prepared it (config.json, queued): run it as configured
            saved = RunConfig.from_dict(io.read_json_strict(folder.path / RF.CONFIG))
            if cfg is not None and cfg.to_dict() != saved.to_dict():
                raise ConfigError(
                    f"Run folder {folder.path} was prepared with another config (its config.json); run it as it is "
                    "(no config) or choose another run folder."
                )
            cfg = saved
        elif folder.path.exists() and any(folder.path.iterdir()):
            raise ConfigError(
                f"Run folder {folder.path} already exists and is not empty; pass --resume to continue it "
                "or choose another --run-dir."
            )
        io.ensure_writable_dir(folder.path)  # a read-only or full disk fails now, before the data is loaded
        cbs[:0] = [folder, *create_sinks(cfg.loggers, folder.path)]  # the run folder first: the source of truth
    elif cfg.loggers:
        raise ConfigError(f"loggers={list(cfg.loggers)} write beside a run folder; distill into one (run_dir).")
    if progress:
        cbs.append(Progress())
    d = Distiller(cfg, cbs, dataset=dataset)
    if folder is not None and resume:  # killed before the first checkpoint: start over
        RF.trim_to_checkpoint(folder.path, d.step if folder.restore(d) else None)
    handlers = {}
    if handle_signals:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, d.request_stop)
        except ValueError:  # not in the main thread: no signal handling
            handlers = {}
    try:
        d.run()
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
    return d
