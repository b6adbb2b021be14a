"""The README's "GPU memory needed" table, written from ``bench/gpu.py``'s measurement, never by hand.

``bench/gpu.py`` (section "Memory levels") saves its rows to ``bench/gpu-memory.json`` and calls
:func:`update_readme`; ``python -m bench.memory_table [FILE]`` rewrites the README from a saved file (e.g.
one brought back from a GPU machine). Without a measurement the README says so.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MEASUREMENT = REPO / "bench" / "gpu-memory.json"
START, END = "<!-- gpu-memory-table: written by bench/gpu.py -->", "<!-- /gpu-memory-table -->"
NOT_MEASURED = (
    "Not measured yet: no GPU run of `make bench-gpu` has happened. Until one does, `--memory auto` picks by "
    "an estimate (`leffa.core.memory.estimated_need`)."
)
TASKS = {"tryon": "try-on (SD1.5 size)", "pose": "pose transfer (SDXL size)"}


def render(measurement: dict | None) -> str:
    """The table's markdown: per task and level, peak GiB and seconds per image for 1 and 4 images."""
    if measurement is None:
        return NOT_MEASURED
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for row in measurement["rows"]:
        rows.setdefault((row["task"], row["level"]), {})[row["num_images"]] = row
    lines = [
        f"Measured by `make bench-gpu` on {measurement['gpu']} ({measurement['date']}): "
        f"{measurement['width']}×{measurement['height']}, {measurement['steps']} steps, {measurement['dtype']}, "
        "random weights of the released sizes; peak = `torch.cuda.max_memory_allocated`.",
        "",
        "| task | `--memory` | peak GiB, 1 image | s / image | peak GiB, 4 images | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for (task, level), counts in rows.items():
        cells = []
        for count in (1, 4):
            row = counts.get(count)
            cells += [_cell(row, "peak_gib"), _cell(row, "seconds_per_image")] if row else ["–", "–"]
        lines.append(f"| {TASKS.get(task, task)} | {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    if row.get("error"):
        return "failed"
    return f"{row[key]:.2f}" if isinstance(row[key], float) else str(row[key])  # "–": no CUDA (--quick)


def load(path: Path = MEASUREMENT) -> dict | None:
    """The saved measurement, or ``None`` when there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def section(text: str) -> str:
    """The README's table section (between the markers)."""
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if match is None:
        raise ValueError(f"README.md lacks the markers {START} ... {END}")
    return match.group(1)


def update_readme(measurement: dict | None, readme: Path = README) -> None:
    """Rewrite the README's table from ``measurement``."""
    text = readme.read_text()
    old = section(text)
    readme.write_text(text.replace(f"{START}\n{old}\n{END}", f"{START}\n{render(measurement)}\n{END}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurement", nargs="?", type=Path, default=MEASUREMENT, help="gpu-memory.json")
    args = parser.parse_args(argv)
    update_readme(load(args.measurement))
    print(f"README.md table written from {args.measurement if args.measurement.is_file() else 'no measurement'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
