"""The files of the `visualize` stage for one model: saliency maps with their sanity numbers,
and filter atlases. Each function computes (with `saliency`, `sanity`, `filters`), draws (with
`plots`) and writes arrays, figures and JSON into a directory the stage writes atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fer import CLASS_NAMES, plots
from fer.data import Split
from fer.evaluation import confusion, top_confusions
from fer.filters import (
    activation_maximisation,
    channel_statistics,
    conv_layer_names,
    feature_maps,
    layer_name,
    receptive_fields,
    unit_boxes,
)
from fer.inference import predict_logits, to_input
from fer.io import save_figure, write_json, write_npz
from fer.models import Network
from fer.params import VisualizeParams
from fer.saliency import METHODS, attribution_maps, class_mean_grad_cam, contrast_maps, select_examples
from fer.sanity import SanityReport, sanity_report

TOP_EXAMPLES = 9
ATLAS_ROWS = 16  # channels per atlas page
CONFUSION_CELLS, CELL_EXAMPLES = 2, 3


def saliency_outputs(model: Network, name: str, val: Split, params: VisualizeParams, out: Path) -> SanityReport:
    """Maps of every registered method for a correct and a misclassified image per class, the
    sanity numbers, contrast maps of the largest confusion cells and the per-class mean Grad-CAM;
    returns the sanity report."""
    cpu = torch.device("cpu")
    predicted = predict_logits(model, val.images, cpu).argmax(1).numpy()
    x_all = to_input(torch.as_tensor(val.images), cpu).contiguous()
    labels = torch.as_tensor(val.labels)
    options = params.methods.by_method

    def maps_of(net: Network, x: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
        return attribution_maps(net, x, targets, {m: options[m] for m in names})

    sample = np.random.default_rng(params.seed).permutation(len(val))[:params.sanity.images]
    fractions = np.linspace(0, params.sanity.deletion_max_fraction, params.sanity.deletion_steps + 1)
    masks = None if val.masks is None else val.masks[sample]
    scored_on = {m: params.sanity.expensive_images if METHODS[m].expensive else len(sample) for m in options}
    sanity = sanity_report(model, x_all[sample], labels[sample], masks, maps_of, scored_on, fractions, params.seed)
    write_json(out / "sanity.json", sanity.as_dict() | {"val_index": sample})

    chosen = select_examples(val.labels, predicted, seed=params.seed)
    maps = maps_of(model, x_all[chosen], labels[chosen], list(options))
    captions = [f"#{i} {CLASS_NAMES[t]}\npred {CLASS_NAMES[p]}"
                for i, t, p in zip(chosen, val.labels[chosen], predicted[chosen])]
    notes = {m: f"rand. r={sanity.methods[m].randomisation_spearman:.2f} del={sanity.methods[m].deletion_auc:.2f}"
             for m in maps}
    save_figure(out / "saliency.png", plots.saliency_figure(
        val.images[chosen], maps, captions, f"{name}: saliency for the true class (validation)", notes))
    write_npz(out / "saliency.npz", val_index=chosen, target=val.labels[chosen], predicted=predicted[chosen], **maps)

    # The largest off-diagonal cells: gradients for the true and the predicted class, and their contrast.
    rows, true, pred = [], [], []
    for pair in top_confusions(confusion(val.labels, predicted), CONFUSION_CELLS):
        cell_rows = np.flatnonzero((val.labels == pair.true) & (predicted == pair.predicted))[:CELL_EXAMPLES]
        rows += cell_rows.tolist()
        true += [pair.true] * len(cell_rows)
        pred += [pair.predicted] * len(cell_rows)
    if rows:
        xb, true_t, pred_t = x_all[rows], torch.as_tensor(true), torch.as_tensor(pred)
        cell = {"gradient, true class": maps_of(model, xb, true_t, ["gradient"])["gradient"],
                "gradient, predicted class": maps_of(model, xb, pred_t, ["gradient"])["gradient"],
                "contrast true - predicted": contrast_maps(model, xb, true_t, pred_t)}
        save_figure(out / "confusion_saliency.png", plots.saliency_figure(
            val.images[rows], cell, [f"#{r} {CLASS_NAMES[t]}\n→ {CLASS_NAMES[p]}" for r, t, p in zip(rows, true, pred)],
            f"{name}: the largest confusion cells (validation)"))
        write_npz(out / "confusion_saliency.npz", val_index=np.asarray(rows), true=np.asarray(true),
                  predicted=np.asarray(pred), true_map=cell["gradient, true class"],
                  predicted_map=cell["gradient, predicted class"], contrast_map=cell["contrast true - predicted"])
    means = class_mean_grad_cam(model, x_all, labels)
    save_figure(out / "grad_cam_class_means.png", plots.image_gallery(
        means, list(CLASS_NAMES), f"{name}: mean Grad-CAM per true class (validation)", columns=7))
    write_npz(out / "grad_cam_class_means.npz", maps=means)
    return sanity


def layer_atlas(model: Network, layer: str, val: Split, x_val: torch.Tensor, params: VisualizeParams,
                out: Path, title: str) -> dict:
    """Activation maximisation, the top validation images of every channel with receptive fields,
    per-channel activation histograms and dead-channel flags for conv layer `layer`, as an
    overview grid and atlas pages of ATLAS_ROWS channels (the first `filters.channels`: activation
    maximisation costs a batch of images per channel), and the histogram, dead flags and top images
    of every channel, with the raw arrays."""
    act = params.filters
    images, start, final = activation_maximisation(model, layer, act.steps, act.lr, act.tv, params.seed,
                                                   act.jitter, act.rotation, act.scale, act.channels)
    stats = channel_statistics(model, layer, x_val)
    val_means, peaks = stats.means, stats.peaks
    dead = peaks <= 0
    n_channels, drawn = val_means.shape[1], len(images)
    top = np.argsort(-val_means, axis=0)[:TOP_EXAMPLES].T  # (C, 9) val indices per channel
    field = receptive_fields(model)[layer]
    boxes = unit_boxes(field, stats.strongest[top, np.arange(n_channels)[:, None]])
    shown = f"channels 0-{drawn - 1} of {n_channels}" if drawn < n_channels else f"{n_channels} channels"
    save_figure(out / "filters.png", plots.filter_grid(images, f"{title}: activation maximisation, {shown}"))
    pages = []
    for first in range(0, drawn, ATLAS_ROWS):
        rows = np.arange(first, min(first + ATLAS_ROWS, drawn))
        pages.append(f"atlas_{len(pages) + 1:02d}.png")
        save_figure(out / pages[-1], plots.filter_atlas(
            images[rows], val.images[top[rows]], boxes[rows], val_means[:, rows], dead[rows], rows.tolist(),
            f"{title}: channels {rows[0]}-{rows[-1]} (receptive field {field.size} px)"))
    save_figure(out / "activation_histogram.png", plots.histogram_figure(
        val_means.mean(axis=0), f"{title}: {int(dead.sum())} dead of {n_channels} channels",
        "mean pre-activation over validation images"))
    write_npz(out / "filters.npz", images=images, activation_start=start, activation_final=final,
              top_val_index=top, top_boxes=boxes, val_channel_means=val_means, val_channel_peaks=peaks)
    return {"dir": out.name, "channels": n_channels, "optimised_channels": drawn, "atlas_pages": pages,
            "dead_channels": np.flatnonzero(dead),
            "mean_activation_start": float(start.mean()), "mean_activation_final": float(final.mean()),
            "mean_activation_val_images": float(val_means[:, :drawn].mean()),  # of the optimised channels
            "channels_raised_above_start": int(np.sum(final > start)),
            "channels_raised_above_val_mean": int(np.sum(final > val_means[:, :drawn].mean(axis=0)))}


def filter_outputs(model: Network, name: str, val: Split, params: VisualizeParams, out: Path) -> dict:
    """A filter atlas for each conv layer named in `filters.layers` (one sub-directory each) and
    the feature maps of one face at every conv layer; returns the per-layer summary."""
    x_val = to_input(torch.as_tensor(val.images), torch.device("cpu")).contiguous()
    summary = {layer: layer_atlas(model, layer_name(model, layer), val, x_val, params,
                                  out / layer.replace(".", "_"), f"{name} {layer}")
               for layer in conv_layer_names(model, params.filters.layers)}
    face = int(np.random.default_rng(params.seed).integers(len(val)))
    maps = feature_maps(model, x_val[face:face + 1])
    save_figure(out / "feature_maps.png", plots.feature_maps_figure(
        val.images[face], maps, f"{name}: feature maps of validation image #{face}"))
    write_npz(out / "feature_maps.npz", val_index=face, **{k.replace(".", "_"): v for k, v in maps.items()})
    write_json(out / "filters_summary.json", {"layers": summary, "feature_maps_val_index": face})
    return summary
