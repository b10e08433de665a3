"""Stage `photos`: what the study's networks do on photos. On real data (a source file, not the
synthetic default), the round trip of labelled test faces pasted into synthetic photos, found and
classified by the code path of `python -m fer.predict` with the study's first model. Then, in an
MLflow run of its own (`photos`), each model's photo model (`<prefix><model>-photo`: images in,
one row per face out): with the model's own weights when it was trained on real data, with the
shipped FER2013 weights of its architecture when it was trained on the synthetic default. A photo
model is logged and registered only when no version holds the same weights and settings; either
way the version becomes `@champion`."""
from __future__ import annotations

from pathlib import Path

from fer import cli, tracking
from fer.data import load_split
from fer.io import atomic_dir, read_json, write_json
from fer.params import TrackingParams, load_section
from fer.photo_model import register_photo_model
from fer.photo_outputs import real_photos
from fer.pretrained import photo_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser(__doc__, reads_models=True)
    parser.add_argument("--out", default="results/photos", help="output directory")
    args = parser.parse_args(argv)
    tracking.check_reachable()
    names = cli.study_models(args)
    models_dir = Path(args.models_dir)
    source = read_json(Path(args.data) / "quality.json")["source"]
    with atomic_dir(args.out) as tmp:
        if "path" in source:
            summary = real_photos(names[0], models_dir / names[0] / "model.pt",
                                  load_split(Path(args.data) / "test.npz"), tmp)
            print(f"{names[0]} on test faces pasted into photos: {summary['detection_rate']:.1%} found, "
                  f"{summary['agreement']:.1%} agreement with the 48x48 prediction")
        else:
            write_json(tmp / "real_photos.json", {"skipped": "the data are the synthetic default faces"})

    settings = load_section(TrackingParams, "tracking", args.params)
    trained = [tracking.trained_model(models_dir, name) for name in names]
    with tracking.new_run(tracking.experiment_name(settings.experiment), "photos", "study",
                          tags={f"training_run.{m.name}": m.run_id for m in trained if m.run_id}):
        tracking.log_model_inputs([m.model_id for m in trained if m.model_id])
        tracking.log_artifacts(args.out, "photos")
        for name in names:
            # The application-facing model beside the tensor model that training registered; it
            # bundles the face detector and crop that `predict` uses.
            checkpoint = photo_checkpoint(models_dir / name / "model.pt")
            if checkpoint is None:
                print(f"{name}: no photo model registered (trained on synthetic faces, and no pretrained {name} ships)")
            else:
                register_photo_model(checkpoint, f"{settings.registered_model(name)}-photo")


if __name__ == "__main__":
    cli.run(main)
