"""Stage `visualize`: saliency maps (one validation image per class, five methods) for one model
and the filters of a conv layer (activation maximisation and top validation images) for another,
with the raw arrays and image indices, attached to each model's MLflow run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fer import CLASS_NAMES, cli, tracking
from fer import plots
from fer.data import load_split
from fer.filters import (activation_maximisation, block_index, channel_statistics, feature_maps, receptive_field,
                         strongest_unit_boxes)
from fer.io import atomic_dir, read_json, save_figure, write_json, write_npz
from fer.models import load_model
from fer.params import VisualizeParams, load_section
from fer.evaluation import confusion, top_confusions
from fer.saliency import METHODS, attribution_maps, class_mean_grad_cam, contrast_maps, select_examples
from fer.sanity import sanity_report
from fer.training import predict_logits, seed_everything, to_input

TOP_EXAMPLES = 9
# Occlusion is left out of the sanity numbers: it costs 256 forward passes per image.
SANITY_METHODS = ("gradient", "smoothgrad", "integrated_gradients", "grad_cam")
CONFUSION_CELLS, CELL_EXAMPLES = 2, 3


def saliency_outputs(name: str, models_dir: Path, val, params: VisualizeParams, out: Path) -> dict:
    """Maps for a correct and a misclassified image per class, the sanity numbers, contrast maps
    of the largest confusion cells and the per-class mean Grad-CAM; returns the sanity report."""
    model = load_model(models_dir / name / "model.pt")
    cpu = torch.device("cpu")
    predicted = predict_logits(model, val.images, cpu).argmax(1).numpy()
    x_all = to_input(torch.as_tensor(val.images), cpu).contiguous()
    labels = torch.as_tensor(val.labels)

    def maps_of(net, x, targets, methods=METHODS):
        return attribution_maps(net, x, targets, params.smoothgrad_noise, params.smoothgrad_samples,
                                params.ig_steps, methods)

    sample = np.random.default_rng(params.seed).permutation(len(val))[:params.sanity_images]
    fractions = np.linspace(0, params.deletion_max_fraction, params.deletion_steps + 1)
    sanity = sanity_report(model, x_all[sample], labels[sample], None if val.masks is None else val.masks[sample],
                           SANITY_METHODS, maps_of, fractions, params.seed)
    write_json(out / "sanity.json", sanity | {"val_index": sample})

    chosen = select_examples(val.labels, predicted, seed=params.seed)
    maps = maps_of(model, x_all[chosen], labels[chosen])
    captions = [f"#{i} {CLASS_NAMES[t]}\npred {CLASS_NAMES[p]}"
                for i, t, p in zip(chosen, val.labels[chosen], predicted[chosen])]
    notes = {m: f"rand. r={sanity[m]['randomisation_spearman']:.2f} del={sanity[m]['deletion_auc']:.2f}"
             for m in maps if m in sanity}
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
        cell = {"gradient, true class": maps_of(model, xb, true_t, ("gradient",))["gradient"],
                "gradient, predicted class": maps_of(model, xb, pred_t, ("gradient",))["gradient"],
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


def filter_outputs(name: str, models_dir: Path, val, params: VisualizeParams, out: Path) -> None:
    """Activation maximisation, top validation images, activation histogram and dead-channel
    flags for one conv layer, and the feature maps of one face at every conv layer."""
    model = load_model(models_dir / name / "model.pt")
    block = block_index(model, params.filters_layer)
    layer = list(model.conv_layers())[block]
    images, start, final = activation_maximisation(model, block, params.act_max_steps, params.act_max_lr,
                                                   params.act_max_tv, params.seed)
    x_val = to_input(torch.as_tensor(val.images), torch.device("cpu")).contiguous()
    val_means, peaks = channel_statistics(model, block, x_val)
    dead = np.flatnonzero(peaks <= 0)
    top = np.argsort(-val_means, axis=0)[:TOP_EXAMPLES].T  # (C, 9) val indices per channel
    save_figure(out / "filters.png", plots.filter_grid(images, f"{name} {layer}: activation maximisation"))
    shown = min(8, len(top))
    rows = top[:shown].ravel()
    channels = np.repeat(np.arange(shown), TOP_EXAMPLES)
    boxes = strongest_unit_boxes(model, block, x_val[rows], channels)
    save_figure(out / "filter_examples.png", plots.image_gallery(
        val.images[rows], [f"ch {c}" for c in channels],
        f"{name} {layer}: top-{TOP_EXAMPLES} validation images of channels 0-{shown - 1} "
        f"(red: receptive field of the strongest unit, {receptive_field(block)[0]} px)",
        columns=TOP_EXAMPLES, boxes=boxes))
    save_figure(out / "filter_activation_histogram.png", plots.histogram_figure(
        val_means.mean(axis=0), f"{name} {layer}: {len(dead)} dead of {len(peaks)} channels",
        "mean pre-ReLU activation over validation images"))
    face = int(np.random.default_rng(params.seed).integers(len(val)))
    maps = feature_maps(model, x_val[face:face + 1])
    save_figure(out / "feature_maps.png", plots.feature_maps_figure(
        val.images[face], maps, f"{name}: feature maps of validation image #{face}"))
    write_npz(out / "filters.npz", images=images, activation_start=start, activation_final=final,
              top_val_index=top, val_channel_means=val_means, val_channel_peaks=peaks)
    write_npz(out / "feature_maps.npz", val_index=face, **{k.replace(".", "_"): v for k, v in maps.items()})
    write_json(out / "filters_summary.json", {
        "layer": layer, "channels": len(images), "dead_channels": dead,
        "mean_activation_start": float(start.mean()), "mean_activation_final": float(final.mean()),
        "mean_activation_val_images": float(val_means.mean()),
        "channels_raised_above_val_mean": int(np.sum(final > val_means.mean(axis=0))),
    })


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--out", default="results/visualize", help="output directory")
    parser.add_argument("--metrics", default="metrics", help="directory of saliency_sanity.json")
    args = parser.parse_args(argv)
    params = load_section(VisualizeParams, "visualize", args.params)
    seed_everything(params.seed)
    val = load_split(Path(args.data) / "val.npz")
    models_dir = Path(args.models_dir)
    with atomic_dir(args.out) as tmp:
        sanity = saliency_outputs(params.saliency_model, models_dir, val, params, tmp / params.saliency_model)
        filter_outputs(params.filters_model, models_dir, val, params, tmp / params.filters_model)
    write_json(Path(args.metrics) / "saliency_sanity.json", {params.saliency_model: sanity})
    for name in {params.saliency_model, params.filters_model}:
        run = read_json(models_dir / name / "run.json")
        with tracking.model_run(run["experiment"], name, run["run_id"]):
            tracking.log_artifacts(Path(args.out) / name, "visualize")
            if name == params.saliency_model:
                tracking.log_metrics(sanity, prefix="saliency_")
    print(f"wrote {args.out}: saliency of {params.saliency_model}, filters of {params.filters_model}")


if __name__ == "__main__":
    cli.run(main)
