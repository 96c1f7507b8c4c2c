"""The study's pictures (needs matplotlib, the optional ``plot`` extra).

* ``accuracy_vs_params.png``: test accuracy (mean ± std) against total
  parameters, log x.
* ``accuracy_vs_shift.png``: accuracy against shift distance (0 = unshifted),
  one line per variant.
* ``feature_maps.png``: one digit's feature maps before pooling (conv 1 +
  ReLU of the trained max-pool model) and after each pooling operator applied
  to those same maps; the strided-conv row shows that model's own learned
  downsampling.
* ``spp_canvas.png``: the SPP model's accuracy per canvas size.

:func:`make_plots` imports matplotlib first and raises ImportError without it.
:data:`PLOT_FILES` names every PNG it can write (the runner removes those
an invocation does not rewrite).
"""
from __future__ import annotations

import os

import numpy as np

from minicnn.layers import AvgPool2D, LPPool2D, MaxPool2D, MixedPool2D, StochasticPool2D
from minicnn.study.robustness import DISTANCES
from minicnn.study.variants import build_variant

PLOT_FILES = ("accuracy_vs_params.png", "accuracy_vs_shift.png", "feature_maps.png", "spp_canvas.png")


def make_plots(results: dict, run_dir: str, digit: np.ndarray, models: dict) -> list[str]:
    """Write every PNG into ``run_dir``; return their file names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig, name):
        fig.savefig(os.path.join(run_dir, name), dpi=110, bbox_inches="tight")
        plt.close(fig)
        files.append(name)

    variants = results["variants"]
    save(_accuracy_vs_params(plt, variants), "accuracy_vs_params.png")
    save(_accuracy_vs_shift(plt, variants), "accuracy_vs_shift.png")
    save(_feature_maps(plt, digit, models), "feature_maps.png")
    if results.get("spp_canvas"):
        save(_spp_canvas(plt, results["spp_canvas"]), "spp_canvas.png")
    return files


MARKERS = "os^vD<>phX*P"


def _accuracy_vs_params(plt, variants):
    """One marker per variant (a legend, not labels: six variants share 105,866 parameters)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for k, v in enumerate(variants):
        a = v["aggregate"]
        ax.errorbar(v["params_total"], 100 * a["test_accuracy_mean"],
                    yerr=100 * (a["test_accuracy_std"] or 0), fmt=MARKERS[k % len(MARKERS)],
                    capsize=3, markersize=7, alpha=0.85, label=f"{v['label']} ({v['params_total']:,})")
    ax.set_xscale("log")
    ax.set_xlabel("total parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    n = max(v["aggregate"]["n_seeds"] for v in variants)
    ax.set_title("Accuracy (mean ± std over seeds) against parameter count" if n > 1
                 else "Accuracy (1 seed) against parameter count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _accuracy_vs_shift(plt, variants):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [0, *DISTANCES]
    for k, v in enumerate(variants):
        a = v["aggregate"]
        ys = [a["shift_clean_accuracy"]] + [a["shift"][str(d)]["accuracy"] for d in DISTANCES]
        ax.plot(xs, [100 * y for y in ys], marker=MARKERS[k % len(MARKERS)], label=v["label"])
    ax.set_xticks(xs)
    ax.set_xlabel("shift distance (pixels; mean over 8 directions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy of shifted digits (background fill)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _forward_to(model, x, stop):
    """Run the first ``stop`` layers of a Sequential in eval mode."""
    model.eval()
    for layer in model.layers[:stop]:
        x = layer.forward(x)
    return x


def _top_channels(maps, n):
    """The ``n`` channels with the most activation energy, strongest first."""
    return np.argsort(-(maps[0] ** 2).sum(axis=(1, 2)))[:n]


def _feature_maps(plt, digit, models, n_channels=4):
    """Rows: the maps before pooling, then each operator applied to them."""
    x = digit.reshape(1, 1, *digit.shape[-2:]).astype(np.float32)
    base = models.get("max") or next(iter(models.values()), None) or build_variant("max", 0)
    before = _forward_to(base, x, 2)                       # conv 1 + ReLU: (1, 16, 28, 28)
    top = _top_channels(before, n_channels)
    stochastic = StochasticPool2D(2, seed=0)               # training mode: one random draw
    rows = [("before pooling\n(conv 1 + ReLU)", before, top),
            ("max 2×2", MaxPool2D(2).forward(before), top),
            ("avg 2×2", AvgPool2D(2).forward(before), top),
            ("max 3×3, stride 2", MaxPool2D(3, 2, padding=1).forward(before), top),
            ("L2 (LP p=2)", LPPool2D(2, 2).forward(before), top),
            ("mixed α=0.5", MixedPool2D(2, alpha=0.5).forward(before), top),
            ("stochastic\n(one training draw)", stochastic.forward(before), top)]
    if "strided" in models:   # a learned operator: its own conv 1, then its stride-2 conv + ReLU
        own = _forward_to(models["strided"], x, 4)
        rows.append(("strided conv\n(own conv 1, learned)", own, _top_channels(own, n_channels)))
    fig, axes = plt.subplots(len(rows), n_channels + 1,
                             figsize=(1.6 * (n_channels + 1) + 1.2, 1.5 * len(rows)))
    for r, (title, maps, channels) in enumerate(rows):
        ax = axes[r, 0]
        ax.axis("off")
        if r == 0:
            ax.imshow(x[0, 0], cmap="gray")
            ax.set_title("digit", fontsize=8)
        ax.text(-0.1, 0.5, title, transform=ax.transAxes, ha="right", va="center", fontsize=8)
        for c, ch in enumerate(channels):
            ax = axes[r, c + 1]
            ax.imshow(maps[0, ch], cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"ch {ch}, {maps.shape[2]}×{maps.shape[3]}", fontsize=7)
    fig.suptitle("One digit's feature maps before and after each pooling type", fontsize=10, y=1.0)
    fig.subplots_adjust(top=0.95)
    return fig


def _spp_canvas(plt, canvas):
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, per_size in canvas.items():
        sizes = [int(s) for s in per_size]
        ax.plot(sizes, [100 * per_size[str(s)] for s in sizes], marker="o", label=mode)
    ax.axvline(28, color="gray", ls=":", lw=1)
    ax.set_xlabel("canvas size (pixels; trained on 28)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("SPP head on other input sizes")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig
