"""Run the pooling study: train every variant for every seed, measure it,
and write the run folder.

Run folder (``runs/<timestamp>/`` unless ``run_dir`` is given)::

    settings.json              what a resumed run must agree with
    parts/<variant>-seed<s>.json   one finished (variant, seed): raw numbers
    models/<variant>-seed<s>.npz   its trained weights (minicnn checkpoint)
    models/<variant>-seed<s>.partial.npz   the run in progress (after each epoch, on Ctrl-C)
    results.json  results.csv  report.md  *.png

The folder is checked first (``run_dir`` must be, or be creatable as, a
folder; an existing ``settings.json`` must be readable and agree), MNIST is
loaded next, and only then is the folder created and ``settings.json``
written, so a run that cannot start leaves nothing behind.  Each invocation
rewrites the PNGs; those of the study's plot names it does not write this
time (``--no-plots``, no matplotlib, no ``spp``) are removed, so the folder
never shows pictures of an earlier run beside a newer report.

Each (variant, seed) is written atomically as soon as it finishes, weights
first, so a part file always means a complete run.  Rerunning into the same
folder reuses the parts it finds and trains only what is missing; a run
stopped mid-way (Ctrl-C) continues from its last checkpoint.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minicnn import checkpoint
from minicnn.data import find_data_dir, load_mnist, num_batches
from minicnn.losses import SoftmaxCrossEntropy
from minicnn.optim import Adam, OneCycleLR
from minicnn.paths import file_in_the_way
from minicnn.study import report
from minicnn.study.robustness import canvas_accuracy, fixed_size_error, shift_robustness
from minicnn.study.variants import VARIANTS, build_variant, check_variant_names, head_start, param_counts
from minicnn.train import Trainer, evaluate


class StudyError(ValueError):
    """A study that cannot run as asked (e.g. a run folder made with other settings)."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything that decides the numbers.  ``None`` limits mean the whole split."""
    variants: tuple = tuple(VARIANTS)
    seeds: int = 3
    epochs: int = 2
    limit_train: int | None = None
    limit_test: int | None = None
    limit_shift: int | None = None     # test images used for shifts and canvases
    batch_size: int = 64
    lr: float = 2e-3                   # peak of the one-cycle schedule
    canvas_sizes: tuple = (24, 28, 32, 36, 40)
    infer_batch: int = 256
    infer_repeats: int = 7
    quick: bool = False

    @classmethod
    def quick_mode(cls, **overrides) -> "StudyConfig":
        """5,000 training images, 1 epoch, 1 seed, 2,000 test images (500 for shifts)."""
        base = cls(seeds=1, epochs=1, limit_train=5000, limit_test=2000, limit_shift=500,
                   infer_repeats=3, quick=True)
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self):
        try:
            check_variant_names(self.variants)
        except ValueError as e:
            raise StudyError(f"variants: {e}") from None
        for name in ("seeds", "epochs", "batch_size", "infer_batch", "infer_repeats"):
            if getattr(self, name) < 1:
                raise StudyError(f"{name} must be >= 1, got {getattr(self, name)}")

    # the settings a resumed run must share with the parts it reuses
    def resume_key(self) -> dict:
        keys = ("epochs", "limit_train", "limit_test", "limit_shift", "batch_size", "lr",
                "canvas_sizes", "infer_batch", "infer_repeats")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}


# --------------------------------------------------------------- one run
def inference_ms(model, xb, repeats: int) -> float:
    """Median wall time (ms) of ``model.forward(xb)`` in eval mode, after a warm-up."""
    model.eval()
    model.forward(xb)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward(xb)
        times.append(time.perf_counter() - t0)
    model.train()
    return 1000 * float(np.median(times))


def warm_up(model, xb, yb) -> None:
    """One training-mode forward and backward pass of a throwaway copy of
    ``model`` on ``(xb, yb)``, no optimiser step, so that Numba compiles (or
    loads from its cache) the variant's kernels before the timed epochs.

    The copy has its own weights, gradients, caches and random generators
    (StochasticPool2D's ``rng``), and nothing here touches the global
    weight-initialisation generator or the data order: ``model`` and the run
    are bit for bit what they would be without the warm-up."""
    twin = copy.deepcopy(model)
    twin.train()
    loss = SoftmaxCrossEntropy()
    loss.forward(twin.forward(xb), yb)
    twin.backward(loss.backward(), input_grad=False)


def train_one(name: str, seed: int, cfg: StudyConfig, data: dict, progress: bool,
              partial: str | None = None):
    """Train variant ``name`` with ``seed`` and measure it -> (model, part dict).

    ``partial``: a Trainer checkpoint written after every epoch and on Ctrl-C;
    if it exists, training continues from it instead of starting over."""
    x, y = data["train"]
    x_test, y_test = data["test"]
    x_shift, y_shift = data["shift"]
    resume = partial is not None and os.path.exists(partial)
    if resume:
        model, meta, optim_arrays = checkpoint.load(partial)
    else:
        model = build_variant(name, seed)
    optimizer = Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * num_batches(len(x), cfg.batch_size)
    scheduler = OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    trainer = Trainer(model, optimizer, batch_size=cfg.batch_size, seed=seed, scheduler=scheduler,
                      progress=progress, model_name=name, checkpoint_path=partial)
    if resume:
        trainer.restore(meta["extra"], optim_arrays)
    warm_up(model, x[:cfg.batch_size], y[:cfg.batch_size])   # compilation stays out of s/epoch
    history = trainer.fit(x, y, cfg.epochs)
    loss, acc = evaluate(model, x_test, y_test)
    xb = x_test[np.arange(cfg.infer_batch) % len(x_test)]
    part = {"variant": name, "seed": seed, "test_accuracy": acc, "test_loss": loss,
            "seconds_per_epoch": [h["seconds"] for h in history], "history": history,
            "inference_ms_per_batch": inference_ms(model, xb, cfg.infer_repeats),
            "shift": shift_robustness(model, x_shift, y_shift)}
    if VARIANTS[name].head == "spp":
        part["canvas"] = canvas_accuracy(model, x_shift, y_shift, cfg.canvas_sizes)
    part["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    part["numba_threads"] = machine_info()["numba_threads"]   # timings depend on it
    return model, part


# ------------------------------------------------------------ run folder
def _part_path(run_dir, name, seed):
    return os.path.join(run_dir, "parts", f"{name}-seed{seed}.json")


def model_path(run_dir, name, seed):
    return os.path.join(run_dir, "models", f"{name}-seed{seed}.npz")


def _read_part(path):
    try:
        with open(path) as f:
            part = json.load(f)
        return part if isinstance(part, dict) and "test_accuracy" in part else None
    except (OSError, json.JSONDecodeError):
        return None


def check_run_dir(run_dir: str) -> None:
    """Refuse, before any work, a ``run_dir`` that cannot be a folder: an
    existing file, or a path through one (``FILE/x``)."""
    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        what = "is a file" if blocker == Path(run_dir).absolute() else f"{blocker} is a file"
        raise StudyError(f"--run-dir {run_dir}: {what}; expected a folder "
                         "(a new one, or a run folder to resume)")


def _read_settings(run_dir: str) -> dict | None:
    """The settings a run folder was made with, or None for a new folder."""
    path = os.path.join(run_dir, "settings.json")
    if not os.path.lexists(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudyError(f"run folder {run_dir}: settings.json is unreadable ({e}); "
                         "use a new --run-dir, or delete that file to start the folder afresh") from None
    if not isinstance(old, dict):
        raise StudyError(f"run folder {run_dir}: settings.json is unreadable (expected a JSON object, "
                         f"found {type(old).__name__}); use a new --run-dir, or delete that file "
                         "to start the folder afresh")
    return old


def _check_settings(run_dir, cfg: StudyConfig) -> None:
    """Refuse a run folder made with settings other than ``cfg``'s (its parts
    would not be comparable).  Writes nothing: see :func:`_open_run_dir`."""
    old = _read_settings(run_dir)
    if old is None:
        return
    diff = {k: (old.get(k), v) for k, v in cfg.resume_key().items() if old.get(k) != v}
    if diff:
        said = "; ".join(f"{k}: folder has {a!r}, this run asks for {b!r}" for k, (a, b) in diff.items())
        raise StudyError(f"run folder {run_dir} was made with other settings ({said}); "
                         "use a new --run-dir or the same settings")


def _open_run_dir(run_dir, cfg: StudyConfig) -> None:
    """Create the run folder and write ``settings.json`` if it is new; called
    once the data is loaded and the work can start."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise StudyError(f"--run-dir {run_dir}: cannot create the folder ({e.strerror or e})") from None
    path = os.path.join(run_dir, "settings.json")
    if not os.path.exists(path):
        checkpoint.atomic_write_bytes(path, json.dumps(cfg.resume_key(), indent=2).encode())


def machine_info() -> dict:
    import numba
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}


def default_command() -> str:
    argv = list(sys.argv)
    prog = "python -m minicnn" if argv and argv[0].endswith("__main__.py") else os.path.basename(argv[0] or "python")
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


# ------------------------------------------------------------------ study
def interrupted_message(checkpoint_path: str) -> str:
    """What to say when a study is stopped (Ctrl-C): where its runs are and
    how to resume.  ``checkpoint_path`` is the interrupted run's partial
    checkpoint, ``RUN_DIR/models/...``."""
    folder = os.path.dirname(os.path.dirname(checkpoint_path))
    return (f"interrupted; finished runs and the one in progress are saved in {folder}; "
            f"resume with the same command plus --run-dir {folder}")


def run_study(cfg: StudyConfig | None = None, run_dir: str | None = None, data_dir=None,
              plots: bool = True, progress: bool = True, command: str | None = None,
              out=None) -> dict:
    """Run (or resume) the study; write the run folder; print the table to ``out``
    (stdout by default).  Returns the results dict that ``results.json`` holds."""
    cfg = cfg or StudyConfig()
    out = out or sys.stdout
    t_start = time.perf_counter()
    run_dir = run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    check_run_dir(run_dir)
    _check_settings(run_dir, cfg)

    folder = find_data_dir(data_dir)
    x, y = load_mnist(folder, "train", limit=cfg.limit_train)
    x_test, y_test = load_mnist(folder, "test", limit=cfg.limit_test)
    n_shift = min(cfg.limit_shift or len(x_test), len(x_test))
    data = {"train": (x, y), "test": (x_test, y_test), "shift": (x_test[:n_shift], y_test[:n_shift])}
    _open_run_dir(run_dir, cfg)

    jobs = [(v, s) for v in cfg.variants for s in range(cfg.seeds)]
    parts = {job: p for job in jobs if (p := _read_part(_part_path(run_dir, *job))) is not None}
    reused = len(parts)
    if parts:
        print(f"resuming in {run_dir}: {len(parts)} of {len(jobs)} runs already complete, skipping "
              + ", ".join(f"{v}/seed {s}" for v, s in parts), file=sys.stderr)
    bar = tqdm(jobs, desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for name, seed in bar:
        bar.set_postfix_str(f"{name} seed {seed}", refresh=True)
        if (name, seed) in parts:
            continue
        partial = model_path(run_dir, name, seed).replace(".npz", ".partial.npz")
        model, part = train_one(name, seed, cfg, data, progress, partial)
        checkpoint.save(model_path(run_dir, name, seed), model)
        checkpoint.atomic_write_bytes(_part_path(run_dir, name, seed), json.dumps(part, indent=1).encode())
        if os.path.exists(partial):
            os.remove(partial)
        parts[(name, seed)] = part
    bar.close()

    variants = []
    for name in cfg.variants:
        v = VARIANTS[name]
        model = build_variant(name, 0)
        total, head = param_counts(model)
        shapes = model.output_shapes(model.input_shape)
        runs = [parts[(name, s)] for s in range(cfg.seeds)]
        variants.append({"name": name, "label": v.label, "description": v.description,
                         "params_total": total, "params_head": head,
                         "head_input_shape": list(shapes[model.layers[head_start(model) - 1].name]),
                         "runs": runs, "aggregate": report.aggregate(runs)})
    spp = next((v for v in variants if VARIANTS[v["name"]].head == "spp"), None)
    results = {
        "config": dict(asdict(cfg), seed_list=list(range(cfg.seeds))),
        "meta": {"command": command or default_command(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "machine": machine_info(), "data_dir": str(folder), "run_dir": run_dir,
                 "sizes": {"n_train": len(x), "n_test": len(x_test), "n_shift": n_shift},
                 "runs_total": len(jobs), "runs_reused": reused},
        "variants": variants,
        "spp_canvas": spp["aggregate"]["canvas"] if spp else None,
        "fixed_size_error": fixed_size_error(build_variant("max", 0), data["shift"][0], 32),
    }
    results["plots"] = _plots(results, run_dir, x_test[0], cfg) if plots else {"skipped": "--no-plots"}
    _remove_stale_plots(run_dir, results["plots"].get("files", []))
    results["meta"]["wall_seconds"] = time.perf_counter() - t_start

    report.write_json(os.path.join(run_dir, "results.json"), results)
    report.write_csv(os.path.join(run_dir, "results.csv"), variants)
    md = report.report_markdown(results)
    checkpoint.atomic_write_bytes(os.path.join(run_dir, "report.md"), md.encode())

    print(report.caption(results) + "\n", file=out)
    print(report.markdown_table(variants), file=out)
    if results["spp_canvas"]:
        print("\nSPP head on other input sizes:\n\n" + report.canvas_table(results["spp_canvas"]), file=out)
    print(f"\n{results['fixed_size_error']}\n", file=out)
    if results["plots"].get("files"):
        print(f"plots: {', '.join(results['plots']['files'])}", file=out)
    else:
        print(f"plots: skipped the plots ({results['plots']['skipped']})", file=out)
    print(f"wrote {run_dir}/report.md, results.json, results.csv "
          f"({results['meta']['wall_seconds']:.0f} s)", file=out)
    return results


def _plots(results, run_dir, digit, cfg) -> dict:
    """Write the PNGs; without matplotlib say so and go on."""
    try:
        from minicnn.study import plots
        files = plots.make_plots(results, run_dir, digit, _trained_models(run_dir, cfg))
    except ImportError as e:
        return {"skipped": f"matplotlib is not installed ({e}); "
                           "install the optional extra: pip install 'minicnn[plot]'"}
    return {"files": files}


def _remove_stale_plots(run_dir, written) -> list[str]:
    """Delete the study's PNGs (:data:`~minicnn.study.plots.PLOT_FILES`) left
    in ``run_dir`` by an earlier invocation and not rewritten by this one, so
    report.md never sits beside pictures of other numbers.  Returns their names."""
    from minicnn.study.plots import PLOT_FILES
    stale = [n for n in PLOT_FILES if n not in written and os.path.isfile(os.path.join(run_dir, n))]
    for name in stale:
        os.remove(os.path.join(run_dir, name))
    return stale


def _trained_models(run_dir, cfg) -> dict:
    """The seed-0 trained model of each variant, loaded from the run folder."""
    models = {}
    for name in cfg.variants:
        path = model_path(run_dir, name, 0)
        if os.path.exists(path):
            models[name] = checkpoint.load(path)[0]
    return models
