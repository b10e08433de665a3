"""Every figure of the project: functions take arrays and return matplotlib figures (Agg)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fer import CLASS_NAMES  # noqa: E402
from fer.evaluation import row_normalise  # noqa: E402


def _to_unit_range(a: np.ndarray) -> np.ndarray:
    """`a` scaled to [0, 1] by its own min and max (all zeros when constant): per-image display
    normalisation for maps and optimised images."""
    span = np.ptp(a)
    return (a - a.min()) / span if span > 0 else np.zeros_like(a, dtype=float)


def confusion_figure(matrix: np.ndarray, title: str, normalised: bool = False) -> Figure:
    """Confusion matrix with class names and the value in every cell (rows = true class)."""
    values = row_normalise(matrix) if normalised else matrix.astype(float)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(CLASS_NAMES))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES,
           xlabel="predicted", ylabel="true", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    threshold = values.max() / 2 if values.max() > 0 else 0.5
    for t in ticks:
        for p in ticks:
            text = f"{values[t, p]:.2f}" if normalised else f"{int(matrix[t, p])}"
            ax.text(p, t, text, ha="center", va="center", fontsize=8,
                    color="white" if values[t, p] > threshold else "black")
    fig.tight_layout()
    return fig


def reliability_figure(confidence: np.ndarray, accuracy: np.ndarray, count: np.ndarray,
                       ece: float, title: str) -> Figure:
    n_bins = len(count)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    used = count > 0
    top.bar(centres[used], accuracy[used], width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.plot(confidence[used], accuracy[used], "o-", color="tab:red", label="mean confidence")
    top.set(ylabel="accuracy", title=f"{title} (ECE {ece:.3f})", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, count, width=1 / n_bins, edgecolor="black")
    bottom.set(xlabel="confidence", ylabel="images")
    fig.tight_layout()
    return fig


def history_figure(history: Sequence[dict], best_epoch: int, title: str) -> Figure:
    """Loss and accuracy curves (train and validation), the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "acc")):
        ax.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label="train")
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label="validation")
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "cross-entropy loss")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_gallery(images: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 6,
                  cell_inches: tuple[float, float] = (1.7, 2.0), fontsize: int = 7) -> Figure:
    """A grid of images with a caption under each: grayscale, or colour in OpenCV's BGR order
    (as `fer.predict.annotate` draws photos)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell_inches[0], rows * cell_inches[1]), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        if image.ndim == 3:
            ax.imshow(image[..., ::-1])
        else:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else None)
        ax.set_title(caption, fontsize=fontsize)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


_GAP = 2  # white pixels between the cells of a mosaic


def _mosaic(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized RGB cells (H, W, 3) in [0, 1] as one image, white between cells and
    where a row is short. A figure of many small images is drawn as one image in one axes: a
    hundred matplotlib axes cost seconds to lay out and render, one costs milliseconds."""
    height, width = rows[0][0].shape[:2]
    step_y, step_x = height + _GAP, width + _GAP
    columns = max(len(row) for row in rows)
    canvas = np.ones((len(rows) * step_y - _GAP, columns * step_x - _GAP, 3))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            canvas[r * step_y:r * step_y + height, c * step_x:c * step_x + width] = cell
    return canvas


def _mosaic_axes(ax: plt.Axes, mosaic: np.ndarray, cell: tuple[int, int], column_labels: Sequence[str] = (),
                 row_labels: Sequence[str] = (), fontsize: float = 7) -> None:
    """Draw a `_mosaic` in `ax`, its column labels on top and row labels on the left of the cells."""
    height, width = cell
    ax.imshow(mosaic, interpolation="nearest")
    ax.xaxis.tick_top()
    ax.set_xticks([c * (width + _GAP) + (width - 1) / 2 for c in range(len(column_labels))], labels=column_labels,
                  fontsize=fontsize)
    ax.set_yticks([r * (height + _GAP) + (height - 1) / 2 for r in range(len(row_labels))], labels=row_labels,
                  fontsize=fontsize)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _rgb(values: np.ndarray, cmap: str = "gray", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """An image's values through a colormap, as RGB in [0, 1]."""
    return plt.get_cmap(cmap)(np.clip((np.asarray(values, dtype=float) - vmin) / (vmax - vmin), 0, 1))[..., :3]


def saliency_figure(images: np.ndarray, maps: dict[str, np.ndarray], captions: Sequence[str],
                    title: str, notes: dict[str, str] | None = None) -> Figure:
    """Rows = images; columns = the image, then for each method its map alone and the map as an
    overlay on the image (60% map; each map scaled to its own range); `notes` (per method, e.g.
    sanity numbers) go under the column titles."""
    notes = notes or {}
    methods = list(maps)
    rows = []
    for row, image in enumerate(images):
        face = _rgb(image, vmax=255)
        heats = [_rgb(_to_unit_range(maps[method][row]), "inferno") for method in methods]
        rows.append([face] + [cell for heat in heats for cell in (heat, 0.6 * heat + 0.4 * face)])
    labels = [""] + [label for method in methods
                     for label in (f"{method}\n{notes[method]}" if method in notes else method, "overlay")]
    columns = len(labels)
    height = 1.9 * len(images) + 0.9
    fig, ax = plt.subplots(figsize=(1.9 * columns, height))
    _mosaic_axes(ax, _mosaic(rows), images[0].shape[:2], labels, captions)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def filter_grid(images: np.ndarray, title: str, columns: int = 16) -> Figure:
    """One panel per channel, each normalised to its own range for display; a panel's channel is
    its row's label plus its column's."""
    columns = min(columns, len(images))
    rows = [[_rgb(_to_unit_range(image)) for image in images[start:start + columns]]
            for start in range(0, len(images), columns)]
    fig, ax = plt.subplots(figsize=(columns * 0.8, len(rows) * 0.8 + 0.7))
    _mosaic_axes(ax, _mosaic(rows), images.shape[1:], [f"+{c}" for c in range(columns)],
                 [str(r * columns) for r in range(len(rows))], fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def feature_maps_figure(image: np.ndarray, maps: dict[str, np.ndarray], title: str, per_layer: int = 12) -> Figure:
    """The input face, then one row per conv layer with its first `per_layer` rectified maps, each
    enlarged to the face's size (pixel blocks) and coloured on its own range."""
    size = image.shape[0]

    def enlarged(fmap: np.ndarray) -> np.ndarray:
        nearest = np.arange(size) * fmap.shape[0] // size
        return _rgb(_to_unit_range(fmap[np.ix_(nearest, nearest)]), "viridis")

    face = _rgb(image, vmax=255)
    rows = [[face] + [enlarged(fmap) for fmap in layer_maps[:per_layer]] for layer_maps in maps.values()]
    fig, ax = plt.subplots(figsize=((per_layer + 1) * 0.9, len(maps) * 1.0 + 0.6))
    _mosaic_axes(ax, _mosaic(rows), (size, size), ["input"] + [str(c) for c in range(per_layer)], list(maps),
                 fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def histogram_figure(values: np.ndarray, title: str, xlabel: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=30, edgecolor="black")
    ax.set(title=title, xlabel=xlabel, ylabel="channels")
    fig.tight_layout()
    return fig


def filter_atlas(optimised: np.ndarray, examples: np.ndarray, boxes: np.ndarray, activations: np.ndarray,
                 dead: np.ndarray, channels: Sequence[int], title: str) -> Figure:
    """One row per channel: its activation-maximisation image (normalised to its own range), its
    top validation images with the strongest unit's receptive field in red, and the histogram of
    its mean activation over the validation images (dead channels flagged).

    optimised (C, H, W) float, examples (C, K, H, W) uint8, boxes (C, K, 4), activations (N, C)
    are indexed by the positions in `channels`.
    """
    n, k = examples.shape[:2]
    size = examples.shape[-1]
    fig, axes = plt.subplots(n, 2, figsize=(1.0 * (k + 1) + 2.2, 1.05 * n + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [k + 1, 2.2]})
    for row in range(n):
        first = (_to_unit_range(optimised[row]) * 255).astype(np.uint8)
        strip = np.concatenate([first, *examples[row]], axis=1)
        left = axes[row, 0]
        left.imshow(strip, cmap="gray", vmin=0, vmax=255)
        left.axvline(size - 0.5, color="yellow", linewidth=1.5)
        for col, (top, lft, bottom, right) in enumerate(boxes[row], start=1):
            left.add_patch(plt.Rectangle((col * size + lft - 0.5, top - 0.5), right - lft + 1, bottom - top + 1,
                                         fill=False, edgecolor="red", linewidth=0.8))
        left.set_xticks([])
        left.set_yticks([])
        left.set_ylabel(f"ch {channels[row]}" + ("\nDEAD" if dead[row] else ""), fontsize=7,
                        color="red" if dead[row] else "black")
        hist = axes[row, 1]
        hist.hist(activations[:, row], bins=25, color="tab:gray")
        hist.axvline(0, color="black", linewidth=0.6)
        hist.tick_params(labelsize=5)
        hist.set_yticks([])
    axes[0, 0].set_title("optimised | top validation images (red: receptive field of the strongest unit)", fontsize=7)
    axes[0, 1].set_title("mean pre-ReLU activation\nover validation images", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def time_to_accuracy_figure(curves: dict[str, Sequence[tuple[float, float, float]]], target: float,
                            title: str) -> Figure:
    """PublicTest (dashed) and PrivateTest (solid) accuracy against minutes, one colour per job;
    `curves[job]` holds (minutes, PublicTest, PrivateTest) after each epoch."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for (job, points), colour in zip(curves.items(), plt.cm.tab10.colors):
        minutes, public, private = np.asarray(points, dtype=float).T
        ax.plot(minutes, private, "-o", color=colour, markersize=3, label=f"{job}: PrivateTest")
        ax.plot(minutes, public, "--", color=colour, alpha=0.7, label=f"{job}: PublicTest")
    ax.axhline(target, color="grey", linewidth=0.8)
    ax.set_xlabel("minutes of training (with per-epoch validation)")
    ax.set_ylabel("accuracy, single pass")
    ax.set_ylim(0.35, 0.72)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return fig
