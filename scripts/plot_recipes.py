"""Draw docs/models.md's recipe trade-offs from docs/measurements/recipes-val.csv (the val table of "Choosing the default
model"): CIDEr-D against distinct captions, and steerability against CIDEr-D for the grounded recipes.

    python scripts/plot_recipes.py [--out docs/recipes-val.png]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"no": "tab:blue", "yes": "tab:orange", "human": "black"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "docs" / "measurements" / "recipes-val.csv"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "recipes-val.png"))
    args = parser.parse_args()
    with open(args.data, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for k, row in enumerate(rows):
        offset = (4, 3 if k % 2 else -10)  # alternate above/below: neighbouring labels overlap less
        x, y = 100 * float(row["distinct"]), float(row["cider"])
        left.scatter(x, y, color=COLOURS[row["grounded"]], s=40)
        left.annotate(row["recipe"], (x, y), textcoords="offset points", xytext=offset, fontsize=8)
        if row["steerability"]:
            steer = float(row["steerability"])
            right.scatter(y, steer, color=COLOURS[row["grounded"]], s=40)
            right.annotate(row["recipe"], (y, steer), textcoords="offset points", xytext=offset, fontsize=8)
    left.axvline(60, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="distinct captions (%)", ylabel="CIDEr-D", title="Specific and varied (val, 119 paintings)")
    right.axhline(0.6, color="grey", linestyle=":", linewidth=1)
    left.margins(x=0.15)
    right.margins(x=0.25)
    right.set(xlabel="CIDEr-D", ylabel="steerability (chance 0.11)", title="Steering against specificity (grounded)")
    for label, colour in (("not grounded", "tab:blue"), ("emotion-grounded", "tab:orange"), ("human", "black")):
        left.scatter([], [], color=colour, label=label)
    left.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
