"""Build the page that `dvc plots show` and `dvc plots diff` fill: plots/template.html with the
Vega, Vega-Lite and Vega-Embed scripts that npm installed under plots/node_modules written inline.

DVC copies the template's text and replaces its placeholders; its own page loads Vega from a CDN,
so without network access the charts stay blank. With the scripts inline, the page draws its
charts offline and stays whole wherever it is copied. `make plots-page` runs this after
`npm ci --prefix plots` and points DVC's `plots.html_template` at the result.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from fer import FerError, cli
from fer.io import write_text

# In load order: Vega-Lite needs Vega, Vega-Embed needs both.
PACKAGES: tuple[str, ...] = ("vega", "vega-lite", "vega-embed")
MARKER = "<!-- vega scripts -->"
# What DVC replaces in the template's text (dvc_render.html.HTML); the template leaves out the
# scripts placeholder, where DVC would put its CDN <script src> tags.
DVC_PLACEHOLDERS: tuple[str, ...] = ("{plot_divs}", "{scripts}", "{refresh_tag}")
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


def inline_script(label: str, code: str) -> str:
    """One <script> element holding `code`; refuses code that would end the element early or
    that DVC would rewrite, rather than writing a page that breaks in the browser."""
    code = SOURCE_MAP.sub("", code).strip()  # the .map files are not copied beside the page
    if "</script" in code.lower():
        raise FerError(f"{label}: contains '</script', cannot be inlined")
    found = [p for p in DVC_PLACEHOLDERS if p in code]
    if found:
        raise FerError(f"{label}: contains DVC's placeholder {found[0]}, cannot be inlined")
    return f"<script>/* {label} */\n{code}\n</script>"


def build_page(template: str, scripts: dict[str, str]) -> str:
    """The template with `scripts` (label -> code, in load order) inline at its marker."""
    if template.count(MARKER) != 1:
        raise FerError(f"template: needs the line {MARKER} exactly once")
    if "{plot_divs}" not in template or "{scripts}" in template:
        raise FerError("template: needs {plot_divs} and must not hold {scripts} (DVC's CDN scripts)")
    return template.replace(MARKER, "\n".join(inline_script(label, code) for label, code in scripts.items()))


def read_packages(modules: Path) -> dict[str, str]:
    """label ('vega 5.33.1') -> minified browser build of each package, as npm installed it."""
    scripts = {}
    for name in PACKAGES:
        package = modules / name / "package.json"
        if not package.is_file():
            raise FerError(f"{package}: not found; install the scripts first with `make plots-page` (needs npm)")
        meta = json.loads(package.read_text(encoding="utf-8"))
        script = modules / name / meta["jsdelivr"]  # the browser build the CDN URLs in DVC's page serve
        scripts[f"{name} {meta['version']}"] = script.read_text(encoding="utf-8")
    return scripts


def main(argv: list[str] | None = None) -> None:
    here = Path(__file__).parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, default=here / "template.html", help="the page's source")
    parser.add_argument("--modules", type=Path, default=here / "node_modules", help="npm's install directory")
    parser.add_argument("--out", type=Path, default=here / "offline.html", help="the page to write")
    args = parser.parse_args(argv)
    scripts = read_packages(args.modules)
    page = build_page(args.template.read_text(encoding="utf-8"), scripts)
    write_text(args.out, page)
    print(f"wrote {args.out} ({len(page.encode()) / 1e6:.1f} MB) with {', '.join(scripts)} inline")


if __name__ == "__main__":
    cli.run(main)
