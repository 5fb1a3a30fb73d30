"""Loss curves as PNG (the report's Figures 2 and 3), written atomically."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_path


def plot_losses(histories: dict[str, list[dict]], path: str | Path, title: str = "Loss per epoch") -> None:
    """One line per run for train loss (solid) and val loss (dashed)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], "-o", ms=3, color=colour, label=f"{name} train")
        ax.plot(epochs, [h["val_loss"] for h in history], "--", color=colour, label=f"{name} val")
    ax.set(xlabel="epoch", ylabel="cross-entropy per token", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
