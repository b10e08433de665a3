"""`dvc plots show` / `dvc plots diff` without network access: the page DVC fills from
plots/offline.html carries Vega inline, and every plot declared in dvc.yaml reaches it.

The plots are rendered from small files written at the declared paths (not from a pipeline run),
in a temporary git + DVC repository, as `dvc plots diff` between a commit and the workspace."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fer import CLASS_NAMES, FerError
from plots.build_page import MARKER, build_page
from tests.conftest import ROOT, env_with_venv, run

TEMPLATE = ROOT / "plots" / "template.html"
OFFLINE_PAGE = ROOT / "plots" / "offline.html"
NOT_BUILT = "plots/offline.html is not built: run `make plots-page` (needs npm)"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def declared_plots() -> list:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]


def study_models() -> list[str]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())["study"]["models"]


def image_dirs(plots: list) -> list[str]:
    return [entry for entry in plots if isinstance(entry, str)]


def plot_files(plots: list) -> dict[str, tuple[str | None, list[str]]]:
    """Every file the declared plot directories hold after a pipeline run -> (template, CSV
    fields), template None for a PNG: a history per model, a confusion table per model and
    split, a history figure per model."""
    files: dict[str, tuple[str | None, list[str]]] = {}
    for entry in plots:
        if isinstance(entry, str):
            files |= {f"{entry}/{model}.png": (None, []) for model in study_models()}
            continue
        (directory, spec), = entry.items()
        fields = [spec["x"], *([spec["y"]] if isinstance(spec["y"], str) else spec["y"])]
        names = ([f"{m}_{split}" for m in study_models() for split in ("train", "val", "test")]
                 if spec["template"].startswith("confusion") else study_models())
        files |= {f"{directory}/{name}.csv": (spec["template"], fields) for name in names}
    return files


def write_plot_files(project: Path, plots: list, seed: int) -> None:
    """Small files in every declared directory: numbers for line charts, class names for
    confusion charts, a grey image for PNG plots (different for each seed, so revisions differ)."""
    rng = np.random.default_rng(seed)
    for path, (template, fields) in plot_files(plots).items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        if template is None:
            Image.new("L", (24, 16), int(rng.integers(256))).save(project / path)
            continue
        rows = [[CLASS_NAMES[rng.integers(len(CLASS_NAMES))] if template.startswith("confusion")
                 else str(i + 1 if j == 0 else round(float(rng.random()), 3)) for j in range(len(fields))]
                for i in range(12)]
        (project / path).write_text("\n".join(",".join(row) for row in [fields, *rows]) + "\n")


@pytest.fixture(scope="module")
def plots_diff(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(output directory, index.html) of `dvc plots diff` between a commit and the workspace, in a
    repository holding dvc.yaml's plots section, with plots.html_template set the way
    `make plots-page` sets it when the offline page is built."""
    project = tmp_path_factory.mktemp("plots") / "project"
    project.mkdir()
    plots = declared_plots()
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    if OFFLINE_PAGE.is_file():
        (project / "plots").mkdir()
        shutil.copy2(OFFLINE_PAGE, project / "plots" / "offline.html")
        run(["dvc", "config", "--local", "plots.html_template", "../plots/offline.html"], project)
    write_plot_files(project, plots, seed=0)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "plots"], project)
    write_plot_files(project, plots, seed=1)
    run(["dvc", "plots", "diff"], project)
    out = project / "dvc_plots"
    return out, (out / "index.html").read_text()


def test_template_keeps_out_dvc_cdn_scripts() -> None:
    template = TEMPLATE.read_text()
    assert "{plot_divs}" in template and template.count(MARKER) == 1
    assert "{scripts}" not in template  # where DVC would put its CDN <script src> tags
    assert not re.search(r"<script[^>]*\bsrc=", template)


def test_build_page_inlines_scripts_in_order() -> None:
    page = build_page(TEMPLATE.read_text(), {"a 1": "var a = 1;\n//# sourceMappingURL=a.js.map",
                                             "b 2": "var b = a;"})
    assert MARKER not in page and "sourceMappingURL" not in page
    assert page.index("var a = 1;") < page.index("var b = a;") < page.index("{plot_divs}")
    for code in ('document.write("</script>")', "var page = '{plot_divs}';"):
        with pytest.raises(FerError, match="cannot be inlined"):
            build_page(TEMPLATE.read_text(), {"bad 1": code})


def test_the_stages_write_into_the_declared_plot_directories() -> None:
    """A new model's plots appear without a new line in dvc.yaml's plots: its train stage writes
    its history into the declared directory, evaluate and report write per model there too."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    directories = [next(iter(entry)) if isinstance(entry, dict) else entry for entry in declared_plots()]
    assert set(directories) == {"results/history", "results/confusion", "reports/history"}
    for model in study_models():
        assert f"--history results/history/{model}.csv" in stages[f"train_{model}"]["cmd"], model
    assert "--confusion results/confusion" in stages["evaluate"]["cmd"]
    assert "--out reports" in stages["report"]["cmd"]


def test_every_declared_plot_is_on_the_page(plots_diff: tuple[Path, str]) -> None:
    out, page = plots_diff
    files = plot_files(declared_plots())
    paths = [path for path, (template, _) in files.items() if template is None]
    blocks = re.split("<p>(" + "|".join(map(re.escape, paths)) + ")</p>", page)[1:]
    shown = dict(zip(blocks[::2], blocks[1::2]))
    assert sorted(shown) == sorted(paths)
    for path, block in shown.items():  # one image per revision, side by side
        images = dict(re.findall(r'<p>([^<]+)</p>\s*<img src="([^"]+)">', block))
        assert sorted(images) == ["HEAD", "workspace"], (path, images)
        assert (out / images["HEAD"]).read_bytes() != (out / images["workspace"]).read_bytes(), path
    assert page.count("vegaEmbed('#") == len(files) - len(paths)


def test_page_loads_no_remote_script(plots_diff: tuple[Path, str]) -> None:
    if not OFFLINE_PAGE.is_file():
        pytest.skip(NOT_BUILT)
    _, page = plots_diff
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r'<(img|link)[^>]*\b(src|href)="https?:', page)
    assert "<script>/* vega-embed " in page  # the inline scripts are there, not DVC's default page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to render the page in")
def test_charts_draw_offline_in_chromium(plots_diff: tuple[Path, str], tmp_path: Path) -> None:
    if not OFFLINE_PAGE.is_file():
        pytest.skip(NOT_BUILT)
    out, page = plots_diff
    # No proxy reachable and no host resolvable: any network request fails.
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         (out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120, env=env_with_venv()).stdout
    drawn = re.findall(r'<(?:canvas|svg)[^>]*class="marks"', dom)  # what Vega adds once a chart is drawn
    assert len(drawn) == page.count("vegaEmbed('#") > 0, "not every Vega chart was drawn"
