"""Hallucinator x basis grids and synthetic-set overviews as images (numpy + PIL, no plotting library).

Synthetic images live in the engine's normalized space; for display they are mapped back with the
dataset's per-channel mean and std from the synset's own ``info`` (``x * std + mean``, clipped to [0, 1]).
ZCA-whitened sets cannot be un-whitened from the synset file alone, so each of their images is min-max
scaled instead (:func:`display_note` says so).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BG = (255, 255, 255)
INK = (49, 51, 63)


EXPLODED = 50.0  # |x| in normalized units; real images lie within a few units of 0


@torch.no_grad()
def magnitude(synset) -> float:
    """The largest |pixel| of every image the synset yields (normalized units)."""
    x, _ = synset.materialize(pairing="all")
    return float(x.abs().max()) if x.numel() else 0.0


def health_note(synset) -> str | None:
    """A warning when the synthetic images have blown up (e.g. a learning rate too high for the hallucinators)."""
    m = magnitude(synset)
    if not math.isfinite(m):
        return "The synthetic images contain NaN or infinite values; resume from an earlier checkpoint or start again."
    if m <= EXPLODED:
        return None
    return (
        f"The synthetic images have blown up (largest |pixel| {m:.3g} in normalized units; real images stay within a "
        "few units), so what you see is clipped. Lower `synset.lr_hallucinators` (it defaults to the backend's "
        "`lr_img`) or `method.lr_img` and start again."
    )


def display_note(info) -> str:
    if getattr(info, "zca", False):
        return "ZCA-whitened set: each image is min-max scaled for display."
    return "Shown un-normalized with the dataset's mean and std, clipped to [0, 1]."


def to_uint8(images: torch.Tensor, info) -> np.ndarray:
    """Normalized images (N, C, H, W) -> displayable uint8 (N, H, W, 3); C may be 1 (grey) or 3."""
    x = images.detach().float().cpu()
    c = x.shape[1]
    if getattr(info, "zca", False):
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    else:
        mean, std = torch.tensor(info.mean, dtype=x.dtype), torch.tensor(info.std, dtype=x.dtype)
        if c != len(mean):  # single-channel bases of an RGB set: their own channel-mean statistics
            mean, std = mean.mean().repeat(c), std.mean().repeat(c)
        x = x * std.view(1, c, 1, 1) + mean.view(1, c, 1, 1)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if c == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy()


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == size:
        return img
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.NEAREST))


@dataclass
class ClassGrid:
    """One class of a synset: its bare bases and every hallucination of them.

    bases: (n_bases, H, W, 3) uint8, shown at image size; cells: (K, n_bases, H, W, 3) uint8 with row j the
    output of hallucinator j (pixels synsets: K = 1, the images themselves); images: the same as normalized
    tensors (K, n_bases, C, H, W) for measurements.
    """

    class_index: int
    class_name: str
    bases: np.ndarray
    cells: np.ndarray
    images: torch.Tensor
    kind: str
    start: int = 0  # index (within the class) of the first basis shown
    variant_name: str = "image"  # what one row is called (the synset kind's variant_name: "hallucinator" for HaBa)

    @property
    def n_hallucinators(self) -> int:
        return self.cells.shape[0]

    @property
    def n_bases(self) -> int:
        return self.cells.shape[1]


@torch.no_grad()
def class_grid(synset, c: int, max_bases: int | None = None, start: int = 0) -> ClassGrid:
    """Hallucinate bases ``start ... start + max_bases - 1`` of class ``c`` with every hallucinator (no sampling)."""
    info = synset.info
    if not 0 <= c < info.num_classes:
        raise ValueError(f"class {c} is out of range (the set has {info.num_classes} classes)")
    synset.eval()
    idx = synset.class_indices(c)[max(0, start) :]
    if max_bases:
        idx = idx[:max_bases]
    k = synset.n_variants
    n = len(idx)
    variant = torch.arange(k, device=idx.device).repeat_interleave(n)  # (K*n,): row-major by hallucinator
    images, _ = synset.images_of(idx.repeat(k), variant)  # (K*n, C, H, W)
    images = images.float().cpu().reshape(k, n, *images.shape[1:])
    h, w = info.im_size
    bases = to_uint8(synset.display_bases(idx).float().cpu(), info)
    bases = np.stack([_resize(b, (h, w)) for b in bases])
    cells = to_uint8(images.reshape(k * n, *images.shape[2:]), info).reshape(k, n, h, w, 3)
    return ClassGrid(c, str(info.class_names[c]), bases, cells, images, synset.kind, max(0, start), synset.variant_name)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def compose(
    rows: list[list[np.ndarray]],
    row_labels: list[str],
    col_labels: list[str],
    scale: int = 3,
    gap: int = 4,
    title: str | None = None,
) -> Image.Image:
    """Lay out equally sized uint8 (H, W, 3) images in a labelled grid (PIL image)."""
    h, w = rows[0][0].shape[:2]
    ch, cw = h * scale, w * scale
    font = _font(max(11, min(16, ch // 4)))
    label_w = max((int(font.getlength(s)) for s in row_labels), default=0) + 2 * gap
    title_h = 26 if title else 0
    col_h = 20 if any(col_labels) else 0
    head = gap + title_h + col_h
    ncols = max(len(r) for r in rows)
    width = max(label_w + ncols * (cw + gap) + gap, int(_font(15).getlength(title)) + 2 * gap if title else 0)
    height = head + len(rows) * (ch + gap) + gap
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=INK, font=_font(15))
    for j, s in enumerate(col_labels[:ncols]):
        x = label_w + j * (cw + gap) + cw // 2 - int(font.getlength(s)) // 2
        draw.text((x, gap + title_h), s, fill=INK, font=font)
    for i, row in enumerate(rows):
        y = head + i * (ch + gap)
        draw.text((gap, y + ch // 2 - font.size // 2), row_labels[i], fill=INK, font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(img).resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (label_w + j * (cw + gap), y))
    # where the cells are, for click-to-enlarge (see figures.grid_figure)
    canvas.info["grid"] = {
        "origin": (label_w, head),
        "pitch": (cw + gap, ch + gap),
        "cell": (cw, ch),
        "rows": len(rows),
        "cols": ncols,
    }
    return canvas


def variant_label(g: ClassGrid, j: int) -> str:
    """Row ``j``'s short label: ``h0``, ``h1``, ... for several variants (HaBa's hallucinators), else the name."""
    return f"{g.variant_name[0]}{j}" if g.n_hallucinators > 1 else g.variant_name


def row_labels(g: ClassGrid, show_bases: bool = True) -> list[str]:
    labels = ["basis"] if show_bases else []
    return labels + [variant_label(g, j) for j in range(g.n_hallucinators)]


def grid_image(g: ClassGrid, scale: int = 3, show_bases: bool = True) -> Image.Image:
    """One row per hallucinator (plus the bare bases on top), one column per basis."""
    rows, labels = [], []
    if show_bases:
        rows.append(list(g.bases))
        labels.append("basis")
    for j in range(g.n_hallucinators):
        rows.append(list(g.cells[j]))
        labels.append(variant_label(g, j))
    cols = [f"b{g.start + i}" for i in range(g.n_bases)]
    return compose(rows, labels, cols, scale, title=f"class {g.class_index}: {g.class_name}")


def cell_image(g: ClassGrid, row: int, col: int, size: int = 320) -> Image.Image:
    """A large view of one cell: ``row`` -1 is the bare basis, else hallucinator ``row`` on basis ``col``."""
    img = g.bases[col] if row < 0 else g.cells[row, col]
    h, w = img.shape[:2]
    scale = max(1, size // max(h, w))
    return Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def overview_image(synset, max_per_class: int = 10, scale: int = 2) -> Image.Image:
    """The synthetic set at a glance: one row per class, its first images (basis-major, every hallucinator)."""
    info = synset.info
    rows, labels = [], []
    for c in range(info.num_classes):
        g = class_grid(synset, c, max_bases=max(1, -(-max_per_class // max(1, synset.n_variants))))
        cells = g.cells.transpose(1, 0, 2, 3, 4).reshape(-1, *g.cells.shape[2:])[:max_per_class]
        rows.append(list(cells))
        labels.append(str(info.class_names[c])[:14])
    ncols = max(len(r) for r in rows)
    return compose(rows, labels, [""] * ncols, scale, gap=2)
