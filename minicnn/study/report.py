"""Turn the study's raw per-run numbers into aggregates, a Markdown table,
``report.md``, ``results.csv`` and ``results.json``.

Aggregates over seeds: accuracy as mean ± sample standard deviation
(ddof = 1; no std with one seed); seconds per epoch, inference time and the
shift numbers as means.
"""
from __future__ import annotations

import csv
import io
import json
import statistics

from minicnn.checkpoint import atomic_write_bytes
from minicnn.study.robustness import DISTANCES

CSV_COLUMNS = (["variant", "label", "params_total", "params_head", "head_input_shape",
                "test_acc_mean", "test_acc_std", "n_seeds", "train_seconds_per_epoch",
                "inference_ms_per_batch"]
               + [f"shift{d}_acc" for d in DISTANCES] + [f"shift{d}_unchanged" for d in DISTANCES])


def _mean(values):
    return float(statistics.fmean(values))


def aggregate(runs: list[dict]) -> dict:
    """Mean (and std of the accuracy) over the seeds of one variant."""
    acc = [r["test_accuracy"] for r in runs]
    agg = {"n_seeds": len(runs), "seeds": [r["seed"] for r in runs],
           "test_accuracy_mean": _mean(acc),
           "test_accuracy_std": float(statistics.stdev(acc)) if len(acc) > 1 else None,
           "train_seconds_per_epoch": _mean([_mean(r["seconds_per_epoch"]) for r in runs]),
           "inference_ms_per_batch": _mean([r["inference_ms_per_batch"] for r in runs]),
           "shift_clean_accuracy": _mean([r["shift"]["clean_accuracy"] for r in runs]),
           "shift": {str(d): {k: _mean([r["shift"]["distances"][str(d)][k] for r in runs])
                              for k in ("accuracy", "unchanged")} for d in DISTANCES}}
    if all("canvas" in r for r in runs):
        modes = runs[0]["canvas"]
        agg["canvas"] = {m: {s: _mean([r["canvas"][m][s] for r in runs]) for s in modes[m]}
                         for m in modes}
    return agg


def _pct(v, digits=2):
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _acc_cell(agg):
    cell = _pct(agg["test_accuracy_mean"])
    return cell if agg["test_accuracy_std"] is None else f"{cell} ± {_pct(agg['test_accuracy_std'])}"


def _shape(s):
    return "×".join(str(v) for v in s)


def markdown_table(variants: list[dict]) -> str:
    """One row per variant (see the module doc of :mod:`minicnn.study`)."""
    head = (["#", "variant", "params", "dense-head params", "head input (C×H×W)",
             "test acc %", "train s/epoch", "infer ms/batch"]
            + [f"shift {d}px: acc % / unchanged %" for d in DISTANCES])
    rows = []
    for i, v in enumerate(variants, 1):
        a = v["aggregate"]
        rows.append([str(i), v["label"], f"{v['params_total']:,}", f"{v['params_head']:,}",
                     _shape(v["head_input_shape"]), _acc_cell(a),
                     f"{a['train_seconds_per_epoch']:.1f}", f"{a['inference_ms_per_batch']:.1f}"]
                    + [f"{_pct(a['shift'][str(d)]['accuracy'], 1)} / {_pct(a['shift'][str(d)]['unchanged'], 1)}"
                       for d in DISTANCES])
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    right = {0, 2, 3, 5, 6, 7}
    fmt = lambda r: "| " + " | ".join(c.rjust(w) if k in right else c.ljust(w)
                                      for k, (c, w) in enumerate(zip(r, widths))) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if k in right else ("-" * (w + 2))
                          for k, w in enumerate(widths)) + "|"
    return "\n".join([fmt(head), rule] + [fmt(r) for r in rows])


def canvas_table(canvas: dict) -> str:
    """SPP accuracy per canvas size, one column per placement mode."""
    modes = list(canvas)
    head = ["canvas"] + [f"SPP acc % ({m})" for m in modes]
    rows = [[f"{s}×{s}"] + [_pct(canvas[m][s]) for m in modes] for s in canvas[modes[0]]]
    widths = [max(len(r[k]) for r in rows + [head]) for k in range(len(head))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
                     + [fmt(r) for r in rows])


def count(n: int, noun: str) -> str:
    """``count(1, "seed")`` -> "1 seed", ``count(2000, "test image")`` -> "2,000 test images"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def accuracy_wording(seeds: int) -> str:
    """What the accuracy column holds: "mean ± std over 3 seeds", or "1 seed
    (no std)" (a standard deviation needs two seeds)."""
    return f"mean ± std over {count(seeds, 'seed')}" if seeds > 1 else "1 seed (no std)"


def caption(results: dict) -> str:
    """The sentence above the table: what the numbers are averaged over."""
    cfg, sizes = results["config"], results["meta"]["sizes"]
    return (f"Test accuracy: {accuracy_wording(cfg['seeds'])} on {count(sizes['n_test'], 'test image')}; "
            f"{count(cfg['epochs'], 'epoch')} on {count(sizes['n_train'], 'training image')}; shifts on "
            f"{count(sizes['n_shift'], 'test image')}, averaged over 8 directions.")


def write_csv(path: str, variants: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for v in variants:
        a = v["aggregate"]
        w.writerow([v["name"], v["label"], v["params_total"], v["params_head"],
                    "x".join(map(str, v["head_input_shape"])),
                    f"{a['test_accuracy_mean']:.6f}",
                    "" if a["test_accuracy_std"] is None else f"{a['test_accuracy_std']:.6f}",
                    a["n_seeds"], f"{a['train_seconds_per_epoch']:.4f}", f"{a['inference_ms_per_batch']:.4f}"]
                   + [f"{a['shift'][str(d)]['accuracy']:.6f}" for d in DISTANCES]
                   + [f"{a['shift'][str(d)]['unchanged']:.6f}" for d in DISTANCES])
    atomic_write_bytes(path, buf.getvalue().encode())


def write_json(path: str, results: dict) -> None:
    atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())


NOTES = """\
## Notes

* **Backbone** (all variants): conv(1→16, 3×3, pad 1) ReLU [down] conv(16→32, 3×3, pad 1) ReLU [down] → head.
  Flatten head: Flatten → Dense(F, 64) → ReLU → Dense(64, 10); "dense-head params" counts these Dense layers.
* **Same recipe for all**: Adam + one-cycle schedule (peak lr {lr:g}), batch {batch_size}, {epochs_text} on
  {train_text}; seed s initialises the weights (`manual_seed(s)`), fixes the data order
  (`Trainer(seed=s)`) and seeds the stochastic pooling. Seeds: {seed_text}.
* **Overlapping max**: MaxPool2D(3, stride 2, padding 1), 28→14→7 like 2×2.
* **Mixed**: MixedPool2D(2, α = 0.5), α *fixed* (not learnable): same parameters as max/avg, only the operator differs.
* **Stochastic**: sampled in training, probability-weighted average in evaluation (inputs are post-ReLU).
* **Strided conv**: each pooling layer replaced by a learned Conv2D(C, C, 3, stride 2, pad 1) + ReLU; the two feature
  convs are unchanged, so only the downsampling operator differs (at the cost of extra parameters).
* **GAP head**: max-pooled backbone → GlobalAvgPool2D → Dense(32, 10), the classic GAP classifier. It keeps one
  number per channel, so the 32 channels must say *what* with no *where*: expect it to need many more steps than
  the flatten heads (far from converged after a quick run).
* **SPP head**: MaxPool2D(2) after conv 1 only; SpatialPyramidPool2D(1, 2, 4, max) on the 14×14 map → 32·21 = 672
  features for any input size → Dense(672, 64) → ReLU → Dense(64, 10).
* **Test accuracy** on {test_text}, {accuracy_text}.
  **train s/epoch** from the Trainer history, after a warm-up: before each run's timed epochs, one forward and
  backward pass (no optimiser step) of a throwaway copy of the model on one batch of {batch_size}, so Numba's
  compilation (or loading from its cache) is not timed; the trained weights are those of a run without it.
  **infer ms/batch**: median of {infer_repeats} forward passes on a batch of {infer_batch} in eval mode, after a
  warm-up.
* **Shifts** on the first {shift_text}: moved d = 1, 2, 3 px in each of 8 directions (diagonals move d rows
  and d columns), vacated pixels filled with the *background* value (−0.1307/0.3081, a black pixel after
  normalisation). "acc" is averaged over the 8 directions; "unchanged" is the fraction of predictions equal to the
  prediction on the unshifted image.
"""


def notes(results: dict) -> str:
    """The report's "Notes" section: :data:`NOTES` filled in for this run."""
    cfg, sizes = results["config"], results["meta"]["sizes"]
    n_seeds = cfg["seeds"]
    accuracy_text = ("mean ± sample std over seeds" if n_seeds > 1
                     else "one seed, so no standard deviation")
    return NOTES.format(seed_text=", ".join(map(str, cfg["seed_list"])),
                        epochs_text=count(cfg["epochs"], "epoch"),
                        train_text=count(sizes["n_train"], "training image"),
                        test_text=count(sizes["n_test"], "test image"),
                        shift_text=count(sizes["n_shift"], "test image"),
                        accuracy_text=accuracy_text, **cfg, **sizes)


def report_markdown(results: dict) -> str:
    cfg, meta = results["config"], results["meta"]
    m = meta["machine"]
    out = [f"# minicnn pooling study ({'quick' if cfg['quick'] else 'full'} mode)", "",
           f"* command: `{meta['command']}`",
           f"* date: {meta['date']}",
           f"* machine: {m['platform']}, {m['cpu_count']} CPUs, numba threads {m['numba_threads']}, "
           f"Python {m['python']}, numpy {m['numpy']}, numba {m['numba']}",
           f"* data: {meta['data_dir']}",
           f"* wall time of this invocation: {meta['wall_seconds']:.0f} s "
           f"({meta['runs_reused']} of {meta['runs_total']} runs reused from earlier invocations)", "",
           caption(results), "", markdown_table(results["variants"]), "",
           notes(results)]
    out += ["## Variable-size input through SPP", ""]
    if results.get("spp_canvas"):
        out += ["The SPP-head model, trained on 28×28, evaluated on the shift subset placed on larger or smaller "
                "canvases: *pad* centres the digit on background (24 crops 2 background pixels per side), "
                "*rescale* resizes the whole image bilinearly.", "", canvas_table(results["spp_canvas"]), ""]
    else:
        out += ["(the `spp` variant was not part of this run)", ""]
    out += ["A fixed-size model (max 2×2, flatten head) given the same inputs:", "",
            f"    {results['fixed_size_error']}", ""]
    out += ["## Pictures", ""]
    plots = results.get("plots", {})
    if plots.get("files"):
        out += [f"![{name}]({name})" for name in plots["files"]]
    else:
        out += [f"Plots skipped: {plots.get('skipped', 'not requested')}."]
    return "\n".join(out) + "\n"
