"""Benchmark profiles as data: which cells run, on which data, with which settings.

A *cell* is one row of the headline table: a storage budget and a method x synset (or the random real
subset at the same storage). ``cpu`` is sized to finish in about 40 minutes on 2 cores (``cpu_bf16`` and
``cpu_fp32``: its distilled cells at pinned precisions, for the distillation-precision check); ``paper`` holds the
published settings for GPU users; ``smoke`` runs in seconds on generated data to keep the harness working;
``repro`` reproduces published baselines; ``synsets`` puts every registered synset kind side by side;
``demo`` is ``make demo`` (minutes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from haba_core.methods import METHODS
from haba_core.synsets import list_synsets


@dataclass(frozen=True)
class Cell:
    name: str
    budget_ipc: float
    method: str | None  # None: the random real subset at the same storage
    synset: str = "pixels"
    config: str | None = None  # preset file, relative to the repo root
    overrides: tuple[str, ...] = ()
    dataset: str = "fashion_mnist"  # which of the profile's expert sets a cell that needs experts (MTT) uses
    published: tuple[float, float] | None = None  # (mean, std) % a paper reports for this cell, if any
    source: str = ""  # where the published figure comes from
    # evaluate the set another profile kept for the cell of this name (``<results>/<run_of>/sets/<name>``) instead
    # of distilling: the cross-architecture study trains other networks on the frontier study's sets
    run_of: str = ""

    @property
    def expert_field(self) -> str | None:
        """The method option that names the cell's expert folder, when its method declares it needs experts
        (``Method.expert_field``: MTT's ``expert_dir``); None otherwise and for random real."""
        return None if self.method is None else METHODS.get(self.method).expert_field

    @property
    def needs_experts(self) -> bool:
        """Whether the cell waits for its dataset's experts (the profile's ``experts`` recipe makes them)."""
        return self.expert_field is not None

    def changes_since(self, record: dict) -> list[str]:
        """How this cell differs from the one a result record ran: the overrides, key by key (a later value of a
        key wins, as in a run), and the set it evaluates. Empty when they agree, or when the record (older than
        this check) does not say."""
        ran = record.get("cell")
        if not isinstance(ran, dict) or "overrides" not in ran:
            return []

        def by_key(overrides) -> dict:
            return {o.split("=", 1)[0]: o for o in overrides}

        now, then = by_key(self.overrides), by_key(ran["overrides"])
        out = [
            f"{now.get(k, k + ' unset')} (ran {then.get(k, k + ' unset')})"
            for k in {**then, **now}
            if now.get(k) != then.get(k)
        ]
        if ran.get("run_of", "") != self.run_of:
            out.append(f"evaluates {self.run_of or 'its own set'} (ran {ran.get('run_of') or 'its own set'})")
        return out


def precision_overrides(precision: str, method: str | None) -> list[str]:
    """The overrides that hold a run of ``method`` (None: no distillation) to ``precision`` ("": none): evaluation,
    and distillation where the method has the option."""
    if not precision:
        return []
    out = [f"eval.precision={precision}"]
    if method and "precision" in {f.name for f in dataclasses.fields(METHODS.get(method).Config)}:
        out.append(f"method.precision={precision}")
    return out


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    common: tuple[str, ...]  # overrides for every distillation cell (data.*, eval.*, ...)
    eval_nets: tuple[str, ...]
    eval_seeds: int
    eval_epochs: int
    cells: tuple[Cell, ...]
    # dataset -> `python -m haba_core experts` arguments (without --out) for the cells that need experts (MTT)
    experts: dict = field(default_factory=dict)
    profile_iterations: int = 2  # iterations run under torch.profiler for the convolution share
    data: dict = field(default_factory=dict)  # how the random-real cells load data
    jobs: int = 1  # cells run at once by default (`--jobs`), each with cores // jobs threads
    notes: tuple[str, ...] = ()  # deviations from the reference settings, printed under the profile's table
    # keep each finished cell's distilled set in <profile>/sets/<cell>.safetensors (committed with the cells: a
    # study that evaluates or measures them again runs on any machine, without the git-ignored run folders)
    keep_sets: bool = False
    runner: str = "bench.run"  # the module whose `python -m ... --cell C` runs one cell (the studies: bench.studies)
    # the precision the profile's protocol fixes for distillation and evaluation ("bf16", "fp32"); "" leaves it to
    # each machine ("auto": bf16 where computed natively), which then records what it ran
    precision: str = ""

    def precision_overrides(self, cell: Cell) -> list[str]:
        """The overrides that hold the cell to the profile's precision (:func:`precision_overrides`)."""
        return precision_overrides(self.precision, cell.method)

    def changes_since(self, cell: Cell, record: dict) -> list[str]:
        """Why a cell's result record is not this profile's result for it now (empty if it is): the cell changed
        since (``Cell.changes_since``), or the record ran at another precision than the profile fixes."""
        precision = self.precision_changes(record)
        return [*cell.changes_since(record), *([precision] if precision else [])]

    def precision_changes(self, record: dict) -> str | None:
        """How a cell's result record ran at another precision than the profile fixes (a machine without native
        bf16 resolves ``auto`` to fp32: another protocol), else None."""
        if not self.precision:
            return None
        ran = {
            "evaluation": (record.get("protocol") or {}).get("precision"),
            "distillation": record.get("distill_precision"),
        }
        other = [f"{what} in {p}" for what, p in ran.items() if p and p != self.precision]
        return f"ran {' and '.join(other)}, not {self.precision}" if other else None


def _matrix(budgets, methods, presets, haba_sizes, extra=(), per_method=None, per_cell=None) -> tuple[Cell, ...]:
    """Random real, then each method x (pixels, haba), at each budget; ``per_method`` and ``per_cell`` (keyed by
    ``(method, kind)``) add overrides after ``extra``."""
    cells = []
    for b in budgets:
        cells.append(Cell(f"ipc{b:g}_random_real", b, None))
        for m in methods:
            for kind in ("pixels", "haba"):
                ov = [*extra, *(per_method or {}).get(m, ())]
                size = haba_sizes.get(b)
                if kind == "haba" and size:
                    ov.append(f"synset.basis_size={size}")
                ov += (per_cell or {}).get((m, kind), ())
                cells.append(Cell(f"ipc{b:g}_{m}_{kind}", b, m, kind, presets.get(m), tuple(ov)))
    return tuple(cells)


def _fmnist(name: str, description: str, seeds: int, cells: tuple[Cell, ...], **kw) -> Profile:
    """A Fashion-MNIST profile evaluated on ConvNet for 300 epochs (the CPU protocol), ``seeds`` networks, two
    cells at a time with one thread each; evaluation networks are compiled (``eval.compile``: same arithmetic)."""
    kw.setdefault("jobs", 2)
    return Profile(
        name=name,
        description=description,
        common=("data.name=fashion_mnist", "eval.nets=convnet", "eval.compile=true"),
        eval_nets=("convnet",),
        eval_seeds=seeds,
        eval_epochs=300,
        cells=cells,
        data={"name": "fashion_mnist"},
        **kw,
    )


CPU = _fmnist(
    "cpu",
    "Fashion-MNIST, CPU-sized iterations (about 40 minutes on 2 cores), ConvNet, 3 evaluation networks",
    3,
    _matrix(
        budgets=(1, 10),
        methods=("dm", "dc", "dsa", "mtt"),
        presets={m: f"configs/fmnist_cpu_{m}.yaml" for m in ("dm", "dc", "dsa", "mtt")},
        # full-size bases + 5 hallucinators do not fit IPC 1 on 28x28: store 14x14 bases there
        haba_sizes={1: 14},
        # execution choices, not protocol: the compiled real-batch pass of DM, DC and DSA (bench/speed.py)
        per_method={m: ("method.compile=true",) for m in ("dm", "dc", "dsa")},
        # the MTT preset's lr_img is HaBa's; pixels' own, also validated
        per_cell={("mtt", "pixels"): ("method.lr_img=300",)},
    ),
    # the MTT preset's experts (configs/fmnist_cpu_mtt.yaml), trained compiled (an execution choice, like the above)
    experts={
        "fashion_mnist": tuple(
            "--num-experts 3 --epochs 6 --train-limit 10000 --set net.width=64 --set compile=true".split()
        )
    },
    profile_iterations=1,  # the convolution share of one iteration (every iteration does the same work)
    notes=(
        "DC and DSA cells run outer/inner loops 1/1 at every budget (the CPU presets pin them): at IPC 10 this "
        "deviates from the reference's 10/50 (DC's `get_loops`), which a default launch of `haba distill` uses.",
    ),
)


# The distillation-precision check (issue #14): the cpu profile's distilled cells (DM, DC, DSA, MTT) under bf16
# autocast and in float32, everything else equal (seeds, iterations, evaluation protocol, compiled real-batch
# passes); bench/distill_precision.py compares the two. Both pin method.precision: cpu runs the defaults, whose
# `auto` resolves to bf16 on this CPU.
def _pinned(name: str, precision: str, description: str) -> Profile:
    return dataclasses.replace(
        CPU,
        name=name,
        description=description,
        cells=tuple(
            dataclasses.replace(c, overrides=(*c.overrides, f"method.precision={precision}"))
            for c in CPU.cells
            if c.method is not None
        ),
    )


CPU_BF16 = _pinned("cpu_bf16", "bf16", "The cpu profile's distilled cells in bf16: the distillation-precision check")
CPU_FP32 = _pinned("cpu_fp32", "fp32", "The cpu profile's distilled cells in float32: the float32 twins of cpu_bf16")

PAPER = Profile(
    name="paper",
    description="Published settings (CIFAR10/100, SVHN; IPC 1/10/50; 1000 epochs, 5 networks): for GPUs",
    common=(),
    eval_nets=("convnet",),
    eval_seeds=5,
    eval_epochs=1000,
    cells=tuple(
        Cell(f"{ds}_ipc{ipc}_{m}_{kind}", ipc, m, kind, f"configs/paper/{ds}_{m}_ipc{ipc}.yaml", dataset=ds)
        for ds in ("cifar10", "cifar100", "svhn")
        for ipc in (1, 10, 50)
        for m in ("dc", "dsa", "dm", "mtt")
        for kind in ("pixels", "haba")
    ),
    # the experts of the paper presets (configs/paper/*_mtt_*.yaml): 100 ConvNets, 50 epochs, ZCA
    experts={ds: ("--num-experts", "100", "--epochs", "50", "--zca") for ds in ("cifar10", "cifar100", "svhn")},
)

SMOKE = Profile(
    name="smoke",
    description="Generated toy data, a few iterations: keeps the harness working (seconds)",
    common=(
        "data.name=toy",
        "net.width=16",
        "haba.extractor_width=16",
        "haba.batch=32",
        "synset.n_hallucinators=2",
        "snapshot_every=0",
        "checkpoint_every=2",
        "eval.test_batch=200",
    ),
    eval_nets=("convnet",),
    eval_seeds=2,
    eval_epochs=3,
    cells=(
        Cell("ipc2_random_real", 2, None),
        Cell("ipc2_dm_pixels", 2, "dm", "pixels", None, ("iterations=2", "method.batch_real=16")),
        Cell("ipc2_dm_haba", 2, "dm", "haba", None, ("iterations=2", "method.batch_real=16")),
        # an MTT cell waits for its experts, which train beside the other cells
        Cell(
            "ipc2_mtt_pixels",
            2,
            "mtt",
            "pixels",
            None,
            ("iterations=2", "method.syn_steps=2", "method.expert_epochs=1", "method.max_start_epoch=1"),
            dataset="toy",
        ),
    ),
    experts={"toy": ("--num-experts", "1", "--epochs", "2", "--set", "net.width=16")},
    profile_iterations=1,
    data={"name": "toy"},
)

# Published settings of DatasetCondensation's main.py (DC and DSA, ConvNet-128 with the reference padding on
# 1x28x28, instance norm, batch_real 256, lr_img 0.1, lr_net 0.01, init real, 1000 iterations, outer/inner
# loops 1/1 at IPC 1) and their evaluation: DSA 1000 epochs with DSA augmentation; DC on Fashion-MNIST 300
# epochs without augmentation (get_daparam augments MNIST only). lr 0.01 decayed x0.1 at half, SGD momentum
# 0.9, weight decay 5e-4, batch 256, no standardization, float32. 5 evaluation networks (the papers use 20 x 5).
_PUBLISHED = (
    "net.width=128",
    "method.batch_real=256",
    "method.lr_img=0.1",
    "method.lr_net=0.01",
    "method.outer_loop=1",
    "method.inner_loop=1",
    "iterations=1000",
    "eval.standardize=false",
    "eval.precision=fp32",
    "method.precision=fp32",
)
# execution choices, not protocol (same arithmetic up to fusion order): the real batches' pass and the evaluation
# networks compiled (DSA step 1.43x at these settings, bench/results/speed_dc.md). The DSA pixels cell ran
# without them (it finished before they existed); its record lists the overrides it ran with.
_FAST = ("method.compile=true", "eval.compile=true")
REPRO = Profile(
    name="repro",
    description="Published DC/DSA baselines on Fashion-MNIST IPC 1 (reference ConvNet, published settings), "
    "and DSA + HaBa at the same storage and settings",
    common=("data.name=fashion_mnist", "eval.nets=convnet", *_PUBLISHED),
    eval_nets=("convnet",),
    eval_seeds=5,
    eval_epochs=1000,
    cells=(
        Cell(
            "fmnist_ipc1_dsa_pixels",
            1,
            "dsa",
            "pixels",
            None,
            (),
            published=(70.6, 0.6),
            source="DSA (Zhao & Bilen, ICML 2021), Table 1",
        ),
        Cell(
            "fmnist_ipc1_dsa_haba",
            1,
            "dsa",
            "haba",
            None,
            # the lr it ran with (the default then; DSA's default is now 3e-4, chosen on validation later)
            ("synset.basis_size=14", "synset.lr_hallucinators=1e-4", *_FAST),
            source="none: no paper reports DSA + HaBa",
        ),
        Cell(
            "fmnist_ipc1_dc_pixels",
            1,
            "dc",
            "pixels",
            None,
            ("eval.epochs=300", "eval.dsa=false", *_FAST),
            published=(70.5, 0.6),
            source="DC (Zhao, Mopuri & Bilen, ICLR 2021), Table 1",
        ),
    ),
    data={"name": "fashion_mnist"},
)

# Every registered synset kind (a new kind joins by itself) at equal storage: DM with the CPU preset (lr_img 1.0
# suits any kind whose bases are an orthonormal transform of pixels), basis_size=auto (each kind's own rule),
# one protocol, 5 evaluation networks. fred runs FreD's per-class variance masks (its default) and, beside it,
# the low-pass square at the same budget (the masks' storage costs the variance cells one image per class).
SYNSET_KINDS = _fmnist(
    "synsets",
    "Every registered synset kind at equal storage: Fashion-MNIST DM (CPU preset) at IPC 1 and 10, ConvNet, "
    "5 evaluation networks",
    5,
    tuple(
        cell
        for b in (1, 10)
        for cell in (
            Cell(f"ipc{b}_random_real", b, None),
            *(Cell(f"ipc{b}_dm_{kind}", b, "dm", kind, "configs/fmnist_cpu_dm.yaml") for kind in list_synsets()),
            Cell(
                f"ipc{b}_dm_fred_lowpass", b, "dm", "fred", "configs/fmnist_cpu_dm.yaml", ("synset.selection=lowpass",)
            ),
        )
    ),
)

# `make demo`: the headline in minutes (HaBa stores 14x14 bases: full-size ones and 5 hallucinators do not fit
# IPC 1 on 28x28).
DEMO = _fmnist(
    "demo",
    "DM + HaBa vs pixel DM vs a random real subset, Fashion-MNIST at budget IPC 1 (CPU preset)",
    3,
    (
        Cell("ipc1_dm_haba", 1, "dm", "haba", "configs/fmnist_cpu_dm.yaml", ("synset.basis_size=14",)),
        Cell("ipc1_dm_pixels", 1, "dm", "pixels", "configs/fmnist_cpu_dm.yaml"),
        Cell("ipc1_random_real", 1, None),
    ),
)

PROFILES = {p.name: p for p in (CPU, CPU_BF16, CPU_FP32, PAPER, SMOKE, REPRO, SYNSET_KINDS, DEMO)}
