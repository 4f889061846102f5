"""RQ2: how diverse the distilled sets are, against real images, and whether diversity predicts accuracy.

    python -m bench.diversity_study      # reads the finished runs of the frontier and constraint studies

For every finished set of the ``frontier`` and ``constraint`` studies (``bench.studies``), every image the set holds
(each basis with each hallucinator for HaBa) is measured class by class and the class values averaged:

- ``pixel_within_class``: RMS pixel distance between two images of a class (normalized space);
- ``feature_within_class``: ``1 - cos`` between the embeddings of two images of a class in a fixed ConvNet trained
  on real data (``feature_net``: seeded, 3 epochs on 10,000 training images, kept in ``findings/diversity/``);
- ``feature_within_class_random``: the same in a fixed, seeded, randomly initialised ConvNet (DM's kind of network);
- ``feature_spread``: the mean distance of a class's embeddings to their centroid, over the real class's (trained
  network; 1.0 = as spread as the real class's images);
- ``effective_rank``: exp of the entropy of the normalized singular values of the class's centred embeddings
  (trained network; at most the number of images per class);
- HaBa only: ``pixel_within_basis`` / ``pixel_between_basis`` and ``feature_within_basis`` / ``feature_between_basis``
  (one basis's hallucinations against each other, and one hallucinator's images of different bases; random network,
  as the app's Explorer shows them).

Real images are measured the same way at the image counts the sets hold (random subsets of the training split,
seeded). Across the sets, each metric's Spearman correlation with the set's ConvNet test accuracy (the study cell's
mean over its networks) says whether diversity predicts accuracy. For the HaBa sets of distillation seed 0 every
snapshot is measured too, so the metrics can be followed over training steps. Nothing here touches the test split:
accuracies are read from the studies' records.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.provenance import provenance
from bench.studies import FINDINGS, STUDIES
from haba_core import runfolder as RF
from haba_core.diversity import cosine_distances, effective_rank, pair_mean, random_feature_net, rms_distances, spread

STUDY_NAMES = ("frontier", "constraint")
OUT = FINDINGS / "diversity"
REAL_COUNTS = (2, 4, 15, 16, 40)  # images per class the sets hold at IPC 1 (pixels 1: no pair)
METRICS = {
    "pixel_within_class": "RMS pixel distance between two images of a class",
    "feature_within_class": "1 - cos between two images of a class, ConvNet trained on real data",
    "feature_within_class_random": "1 - cos between two images of a class, random ConvNet",
    "feature_spread": "mean distance of a class's embeddings to their centroid / the real class's (trained ConvNet)",
    "effective_rank": "exp(entropy of the normalized singular values of the class's centred embeddings)",
    "pixel_within_basis": "HaBa: RMS pixel distance between one basis's hallucinations",
    "pixel_between_basis": "HaBa: RMS pixel distance between one hallucinator's images of different bases",
    "feature_within_basis": "HaBa: 1 - cos between one basis's hallucinations (random ConvNet)",
    "feature_between_basis": "HaBa: 1 - cos between one hallucinator's images of different bases (random ConvNet)",
}


@torch.no_grad()
def embed(net, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([net.forward_features(x[i : i + batch]) for i in range(0, len(x), batch)])


def class_metrics(x: torch.Tensor, trained, random_net, real_spread: float | None) -> dict:
    """The class-level metrics of the images ``x`` (n, C, H, W) of one class."""
    zt, zr = embed(trained, x), embed(random_net, x)
    return {
        "pixel_within_class": pair_mean(rms_distances(x)),
        "feature_within_class": pair_mean(cosine_distances(zt)),
        "feature_within_class_random": pair_mean(cosine_distances(zr)),
        "feature_spread": spread(zt) / real_spread if real_spread and len(x) > 1 else None,
        "effective_rank": effective_rank(zt),
    }


def basis_metrics(grid: torch.Tensor, random_net) -> dict:
    """HaBa: ``grid`` (K, n, C, H, W) of one class, hallucinator j of basis i at [j, i]."""
    k, n = grid.shape[:2]
    z = embed(random_net, grid.reshape(k * n, *grid.shape[2:])).reshape(k, n, -1)
    out = {}
    for name, dist, t in (("pixel", rms_distances, grid), ("feature", cosine_distances, z)):
        within = [pair_mean(dist(t[:, i])) for i in range(n)]
        between = [pair_mean(dist(t[j])) for j in range(k)]
        out[f"{name}_within_basis"] = _mean(within)
        out[f"{name}_between_basis"] = _mean(between)
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def average(rows: list[dict]) -> dict:
    return {k: _mean(r.get(k) for r in rows) for k in METRICS if any(r.get(k) is not None for r in rows)}


@torch.no_grad()
def set_metrics(synset, trained, random_net, real_spreads: list[float]) -> dict:
    """Class metrics averaged over classes (and HaBa's basis metrics) of every image ``synset`` holds."""
    rows = []
    for c in range(synset.num_classes):
        idx = synset.class_indices(c)
        k = synset.n_variants
        grid = torch.stack([synset.images_of(idx, torch.full_like(idx, j))[0] for j in range(k)]).float()
        row = class_metrics(grid.reshape(-1, *grid.shape[2:]), trained, random_net, real_spreads[c])
        if synset.kind == "haba" and k > 1:
            row.update(basis_metrics(grid, random_net))
        rows.append(row)
    return average(rows)


def feature_net(dataset, seed: int = 0, epochs: int = 3, n: int = 10_000):
    """A ConvNet-64 trained on ``n`` real training images (seeded), cached under ``OUT``; eval mode, frozen."""
    from haba_core import io
    from haba_core.nets import create_net

    info = dataset.info
    torch.manual_seed(seed)
    net = create_net("convnet", info.channels, info.num_classes, tuple(info.im_size), width=64)
    path = OUT / f"feature_net_seed{seed}.safetensors"
    if path.exists():
        net.load_state_dict(io.load_tensors(path, "feature_net")[0])
        return net.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset.labels_train), generator=g)[:n]
    x, y = dataset.images_train[idx], dataset.labels_train[idx]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.train()
    for _ in range(epochs):
        for b in torch.randperm(n, generator=g).split(256):
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    OUT.mkdir(parents=True, exist_ok=True)
    io.save_tensors(path, net.state_dict(), {"format": "feature_net", "seed": seed, "epochs": epochs, "images": n})
    return net.eval().requires_grad_(False)


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties): Pearson's r of the ranks."""
    if len(xs) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def correlate(rows: list[dict], metric: str) -> dict:
    """Spearman's rho of ``metric`` against accuracy over all sets, and within each budget, method and length
    (across budgets, both grow with the images a set holds, so the pooled rho mixes in the budget; another method's
    or a longer run's sets are a group of their own, keyed ``"1, MTT"`` or ``"10, 800 iterations"``)."""

    def rho(sub):
        pts = [(r["metrics"][metric], r["accuracy"]) for r in sub if r["metrics"].get(metric) is not None]
        return {"spearman": spearman(*map(list, zip(*pts, strict=True))) if len(pts) > 1 else None, "n": len(pts)}

    def group(r):
        tags = r.get("tags") or {}
        method = tags.get("method", "dm")
        return (r["budget"], "" if method == "dm" else method.upper(), tags.get("iterations") or 0)

    def label(b, method, it):
        return ", ".join([f"{b:g}", *([method] if method else []), *([f"{it} iterations"] if it else [])])

    groups = sorted({group(r) for r in rows})
    return {**rho(rows), "by_budget": {label(*g): rho([r for r in rows if group(r) == g]) for g in groups}}


def carried_steps(previous: dict, steps: list[dict], rows: list[dict]) -> list[dict]:
    """The previous results' steps of the sets still measured whose snapshots are not on this machine now (the
    metrics of a snapshot do not change), each marked with the commit that measured it."""
    have = {(s["study"], s["arm"], s["seed"]) for s in steps}
    sets = {(r["study"], r["arm"], r["seed"]) for r in rows}
    out = []
    for s in previous.get("over_steps", []):
        key = (s["study"], s["arm"], s["seed"])
        if key in sets and key not in have:
            out.append({**s, "measured_at": s.get("measured_at") or previous.get("git_commit", "")[:12]})
    return out


def finished_sets(root: Path = FINDINGS, elsewhere: tuple[Path, ...] = ()):
    """(study, arm, seed, cell record, kept set, run folder) of every finished distilled cell of the studies. The
    run folder, git-ignored, holds the snapshots only where the cell was distilled: ``root``'s, else the first of
    the ``elsewhere`` findings folders (another worktree's) that has it."""
    for name in STUDY_NAMES:
        study = STUDIES[name]
        for arm in study.arms:
            if arm.kind == "random_real" or arm.borrowed_from:
                continue
            for cell in arm.cells():
                rec = root / name / "cells" / f"{cell.name}.json"
                kept = root / name / "sets" / f"{cell.name}.safetensors"
                runs = [r / name / "runs" / cell.name / "run" for r in (root, *elsewhere)]
                run = next((r for r in runs if r.is_dir()), runs[0])
                if rec.exists() and kept.exists():
                    yield name, arm, int(cell.name.rsplit("__s", 1)[1]), json.loads(rec.read_text()), kept, run


def main(argv: list[str] | None = None) -> int:
    from haba_core import io
    from haba_core.data import load_dataset
    from haba_core.synsets import load_synset

    p = argparse.ArgumentParser(prog="python -m bench.diversity_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(FINDINGS))
    p.add_argument("--no-steps", action="store_true", help="skip the snapshots (the metrics over training steps)")
    p.add_argument(
        "--snapshots-from",
        action="append",
        default=[],
        help="another findings folder (a worktree's) whose run folders hold snapshots of the same cells",
    )
    a = p.parse_args(argv)
    root = Path(a.out)
    previous = io.read_json_strict(root / "diversity.json") if (root / "diversity.json").exists() else {}
    t0 = time.time()
    ds = load_dataset("fashion_mnist")
    trained, random_net = feature_net(ds), random_feature_net(ds.info)
    g = torch.Generator().manual_seed(0)
    real_full = [ds.images_train[ds.indices_of_class(c)] for c in range(ds.info.num_classes)]
    # the real class's spread in the trained network, from 500 images of each class (the unit of feature_spread)
    real_spreads = [spread(embed(trained, x[torch.randperm(len(x), generator=g)[:500]])) for x in real_full]
    real = []
    for n in REAL_COUNTS:
        rows = [
            class_metrics(x[torch.randperm(len(x), generator=g)[:n]], trained, random_net, real_spreads[c])
            for c, x in enumerate(real_full)
        ]
        real.append({"n_per_class": n, "metrics": average(rows)})
    rows, steps = [], []
    for study, arm, seed, rec, kept, run in finished_sets(root, tuple(map(Path, a.snapshots_from))):
        synset = load_synset(kept)
        metrics = set_metrics(synset, trained, random_net, real_spreads)
        rows.append(
            {
                "study": study,
                "arm": arm.name,
                "seed": seed,
                "kind": arm.kind,
                "budget": arm.budget,
                "tags": arm.tags,
                "images_per_class": synset.images_per_class,
                "accuracy": 100 * rec["accuracy_mean"],
                "metrics": metrics,
            }
        )
        print(f"{study}/{arm.name} s{seed}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()), flush=True)
        if a.no_steps or seed != 0 or arm.kind != "haba":
            continue
        for step, snap in RF.snapshots(run).items():
            m = set_metrics(load_synset(snap), trained, random_net, real_spreads)
            steps.append({"study": study, "arm": arm.name, "seed": seed, "step": step, "metrics": m})
    steps += carried_steps(previous, steps, rows)
    correlation = {k: correlate(rows, k) for k in METRICS}
    result = {
        "study": "diversity",
        "question": "RQ2: are hallucinated images diverse, more than pixels or real "
        "ones, and does diversity predict accuracy?",
        **provenance("bench.diversity_study", argv),
        "metrics": METRICS,
        "rows": rows,
        "real": real,
        "over_steps": steps,
        "correlation": correlation,
        "wall_s": round(time.time() - t0, 1),
    }
    io.write_json(root / "diversity.json", result)
    (root / "diversity.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    shown = ("pixel_within_class", "feature_within_class", "feature_spread", "effective_rank", "feature_within_basis")
    lines = [
        f"### Study `diversity`: {r['question']}",
        "",
        f"Command: `{r['command']}` at `{r['git_commit'][:12]}`.",
        "",
        "Metrics (each a mean over the ten classes):",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in r["metrics"].items()]
    head = "| set | seed | images/class | accuracy % | " + " | ".join(shown) + " |"
    lines += ["", head, "|---" * (4 + len(shown)) + "|"]

    def fmt(m, k):
        v = m.get(k)
        return "" if v is None else f"{v:.3f}"

    for row in r["rows"]:
        lines.append(
            f"| {row['study']}/{row['arm']} | {row['seed']} | {row['images_per_class']} | "
            f"{row['accuracy']:.2f} | " + " | ".join(fmt(row["metrics"], k) for k in shown) + " |"
        )
    for real in r["real"]:
        lines.append(
            f"| real images | | {real['n_per_class']} | | " + " | ".join(fmt(real["metrics"], k) for k in shown) + " |"
        )
    lines += ["", "Spearman correlation with accuracy across the sets, and within each budget:", ""]

    def rho(c):
        return ("n/a" if c["spearman"] is None else f"{c['spearman']:+.2f}") + f" (n = {c['n']})"

    for k, c in r["correlation"].items():
        within = "; ".join(f"IPC {b}: {rho(v)}" for b, v in c.get("by_budget", {}).items() if v["n"])
        lines.append(f"- `{k}`: all {rho(c)}" + (f"; {within}" if within else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
