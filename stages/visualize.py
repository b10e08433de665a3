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
from fer.filters import activation_maximisation, block_index, channel_means
from fer.io import atomic_dir, read_json, save_figure, write_json, write_npz
from fer.models import load_model
from fer.params import VisualizeParams, load_section
from fer.saliency import attribution_maps, select_examples
from fer.training import predict_logits, seed_everything, to_input

TOP_EXAMPLES = 9


def saliency_outputs(name: str, models_dir: Path, val, params: VisualizeParams, out: Path) -> None:
    model = load_model(models_dir / name / "model.pt")
    predicted = predict_logits(model, val.images, torch.device("cpu")).argmax(1).numpy()
    chosen = select_examples(val.labels, predicted, per_class=1, seed=params.seed)
    x = to_input(torch.as_tensor(val.images[chosen]), torch.device("cpu")).contiguous()
    maps = attribution_maps(model, x, torch.as_tensor(val.labels[chosen]), params.smoothgrad_noise,
                            params.smoothgrad_samples, params.ig_steps)
    captions = [f"#{i} {CLASS_NAMES[t]}\npred {CLASS_NAMES[p]}"
                for i, t, p in zip(chosen, val.labels[chosen], predicted[chosen])]
    save_figure(out / "saliency.png", plots.saliency_figure(
        val.images[chosen], maps, captions, f"{name}: saliency for the true class (validation)"))
    write_npz(out / "saliency.npz", val_index=chosen, target=val.labels[chosen], predicted=predicted[chosen],
              **maps)
    write_json(out / "saliency_examples.json", {"split": "val", "val_index": chosen,
                                                "true": [CLASS_NAMES[t] for t in val.labels[chosen]],
                                                "predicted": [CLASS_NAMES[p] for p in predicted[chosen]]})


def filter_outputs(name: str, models_dir: Path, val, params: VisualizeParams, out: Path) -> None:
    model = load_model(models_dir / name / "model.pt")
    block = block_index(model, params.filters_layer)
    layer = list(model.conv_layers())[block]
    images, start, final = activation_maximisation(model, block, params.act_max_steps, params.act_max_lr,
                                                   params.act_max_tv, params.seed)
    val_means = channel_means(model, block, to_input(torch.as_tensor(val.images), torch.device("cpu")))
    top = np.argsort(-val_means, axis=0)[:TOP_EXAMPLES].T  # (C, 9) val indices per channel
    save_figure(out / "filters.png", plots.filter_grid(images, f"{name} {layer}: activation maximisation"))
    shown = min(8, len(top))
    save_figure(out / "filter_examples.png", plots.image_gallery(
        val.images[top[:shown].ravel()], [f"ch {c}" for c in range(shown) for _ in range(TOP_EXAMPLES)],
        f"{name} {layer}: top-{TOP_EXAMPLES} validation images of channels 0-{shown - 1}", columns=TOP_EXAMPLES))
    write_npz(out / "filters.npz", images=images, activation_start=start, activation_final=final,
              top_val_index=top, val_channel_means=val_means)
    write_json(out / "filters_summary.json", {
        "layer": layer, "channels": len(images),
        "mean_activation_start": float(start.mean()), "mean_activation_final": float(final.mean()),
        "mean_activation_val_images": float(val_means.mean()),
        "channels_raised_above_val_mean": int(np.sum(final > val_means.mean(axis=0))),
    })


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--models-dir", default="models", help="where train_<model> wrote its outputs")
    parser.add_argument("--data", default="data/prepared", help="prepared data directory")
    parser.add_argument("--out", default="results/visualize", help="output directory")
    args = parser.parse_args(argv)
    params = load_section(VisualizeParams, "visualize", args.params)
    seed_everything(params.seed)
    val = load_split(Path(args.data) / "val.npz")
    models_dir = Path(args.models_dir)
    with atomic_dir(args.out) as tmp:
        saliency_outputs(params.saliency_model, models_dir, val, params, tmp / params.saliency_model)
        filter_outputs(params.filters_model, models_dir, val, params, tmp / params.filters_model)
    for name in {params.saliency_model, params.filters_model}:
        run = read_json(models_dir / name / "run.json")
        with tracking.model_run(run["experiment"], name, run["run_id"]):
            tracking.log_artifacts(Path(args.out) / name, "visualize")
    print(f"wrote {args.out}: saliency of {params.saliency_model}, filters of {params.filters_model}")


if __name__ == "__main__":
    cli.run(main)
