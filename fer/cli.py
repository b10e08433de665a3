"""What every stage entry point shares: argument parsing with --help, readable logging, and
turning expected failures (bad data, bad params, divergence) into one clear line and exit 1."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from fer import FerError
from fer.params import ParamsError, StudyParams, load_section

# FerError covers bad data, bad params and divergence; a missing input file is expected too.
EXPECTED_ERRORS = (FerError, FileNotFoundError)


def parser(description: str, reads_data: bool = True, reads_models: bool = False) -> argparse.ArgumentParser:
    """The stage's parser: --params, --data (the prepared data) and --models-dir, as used."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="the params file to read")
    if reads_data:
        p.add_argument("--data", default="data/prepared", help="prepared data directory")
    if reads_models:
        p.add_argument("--models-dir", default="models", help="where train_<model> wrote its outputs")
    return p


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Call a stage's main(); on an expected error print `error: <message>` and exit 1."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # live logs under DVC/nohup
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main(argv)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def study_models(args: argparse.Namespace) -> list[str]:
    """The models of `study.models` in the params file, each checked to have been trained."""
    names = load_section(StudyParams, "study", args.params).models
    for name in names:
        if not (Path(args.models_dir) / name / "model.pt").is_file():
            raise ParamsError(f"params.yaml study.models: '{name}' has no {args.models_dir}/{name}/model.pt; "
                              f"add a train_{name} section to params.yaml and a train_{name} stage to dvc.yaml")
    return names
