"""The ``minicnn`` command (also ``python -m minicnn``).

    minicnn train      [--model default] [--epochs N] ... [--save PATH] [--metrics PATH]
    minicnn evaluate   --load PATH
    minicnn summary    --model NAME
    minicnn gradcheck  [--layers NAME ...]
    minicnn study      [--quick] [--seeds N] [--epochs N] [--variants a,b] [--run-dir DIR] ...
    minicnn bench      [--quick] [--only SECTIONS] ...   (python -m benchmarks; a source checkout)

Invalid flags or values exit with status 2 and an argparse message; known
failures (missing data, bad checkpoint, NaN in training) print one clear
message and exit 1; Ctrl-C during training saves a checkpoint, says how to
resume and exits 130.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path


# ------------------------------------------------------------ argument types
def number(kind, minimum, what, *, strict=False, below=None):
    """An argparse type: ``kind(text)`` that must be finite, ``>= minimum``
    (``> minimum`` when ``strict``) and, when ``below`` is given, ``< below``;
    otherwise "expected {what}, got '...'"."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = (v > minimum if strict else v >= minimum) and (below is None or v < below)
        if not (ok and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = number(int, 1, "a positive integer")
_nonneg_int = number(int, 0, "an integer >= 0")
_positive_float = number(float, 0.0, "a positive number", strict=True)
_momentum = number(float, 0.0, "a number in [0, 1)", below=1.0)      # SGD momentum


def _shape(text):
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 1,28,28, got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W of three positive integers, got {text!r}")
    return dims


# --------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    from minicnn.models import MODELS

    p = argparse.ArgumentParser(prog="minicnn", description="A small, readable and fast CNN "
                                "framework on numpy + Numba, built to measure what pooling does.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model on MNIST",
                       description="Train a named model on MNIST. Flags left out take the model's "
                                   "recipe (see `minicnn summary`); with --resume, the settings of "
                                   "the run that wrote the checkpoint.")
    t.add_argument("--model", choices=sorted(MODELS), help="which model to build (default: default)")
    t.add_argument("--epochs", type=_positive_int, help="number of epochs")
    t.add_argument("--batch-size", type=_positive_int, help="batch size")
    t.add_argument("--lr", type=_positive_float, help="learning rate (the peak, with --schedule onecycle)")
    t.add_argument("--optimizer", choices=["sgd", "adam"], help="optimiser")
    t.add_argument("--schedule", choices=["onecycle", "constant"], help="learning-rate schedule")
    t.add_argument("--momentum", type=_momentum, help="SGD momentum (default 0.9)")
    t.add_argument("--seed", type=_nonneg_int, help="random seed (default 0)")
    t.add_argument("--data-dir", help="folder holding the MNIST IDX files "
                                      "(default: $MINICNN_DATA, then the cache)")
    t.add_argument("--download", action="store_true", help="download MNIST if it is not found")
    t.add_argument("--limit-train", type=_positive_int, metavar="N",
                   help="train on the first N examples only, for quick runs")
    t.add_argument("--grad-clip", type=_positive_float, metavar="NORM",
                   help="clip the global gradient norm to NORM")
    t.add_argument("--save", metavar="PATH", help="write a checkpoint (.npz) after every epoch")
    t.add_argument("--resume", metavar="PATH", help="continue training from a checkpoint")
    t.add_argument("--metrics", metavar="PATH", help="write per-epoch metrics as JSON")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="test accuracy of a saved model")
    e.add_argument("--load", required=True, metavar="PATH", help="checkpoint written by train --save")
    e.add_argument("--data-dir", help="folder holding the MNIST IDX files")

    s = sub.add_parser("summary", help="print a model's layers, shapes and parameter counts")
    s.add_argument("--model", default="default", choices=sorted(MODELS))
    s.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="input shape (default: the model's)")

    g = sub.add_parser("gradcheck", help="check every backward pass against finite differences")
    g.add_argument("--layers", nargs="+", metavar="NAME",
                   help="only the cases whose name starts with one of these (case-insensitive; "
                        "default: all)")
    g.add_argument("--seed", type=_nonneg_int, default=0)

    st = sub.add_parser("study", help="the pooling study: train variants, measure, report",
                        description="Train the pooling variants of one backbone on MNIST with the same "
                                    "seeds, optimiser, epochs and data order; print a Markdown table and "
                                    "write report.md, results.json, results.csv and PNGs into the run folder. "
                                    "Rerunning into the same --run-dir skips the runs already complete.")
    st.add_argument("--quick", action="store_true",
                    help="5,000 training images, 1 epoch, 1 seed, 2,000 test images (500 for shifts)")
    st.add_argument("--seeds", type=_positive_int, metavar="N",
                    help="seeds 0..N-1 per variant (default 3; 1 with --quick; >= 3 in the full mode)")
    st.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs (default 2; 1 with --quick)")
    st.add_argument("--limit-train", type=_positive_int, metavar="N", help="train on the first N images")
    st.add_argument("--limit-test", type=_positive_int, metavar="N", help="test on the first N images")
    st.add_argument("--limit-shift", type=_positive_int, metavar="N",
                    help="shift / canvas tests on the first N test images (default: all tested)")
    st.add_argument("--lr", type=_positive_float, help="peak learning rate of the one-cycle Adam (default 2e-3)")
    st.add_argument("--variants", type=variant_list, metavar="a,b,...",
                    help="comma-separated subset of: " + ", ".join(_study_variants()))
    st.add_argument("--run-dir", metavar="DIR", help="run folder (default runs/<timestamp>); reuse to resume")
    st.add_argument("--data-dir", help="folder holding the MNIST IDX files (default: $MINICNN_DATA, then the cache)")
    st.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    st.add_argument("--no-progress", action="store_true", help="no progress bars")

    # listed for `minicnn --help`; main() hands `bench`'s arguments over before parsing
    b = sub.add_parser("bench", add_help=False,
                       help="the benchmark suite (python -m benchmarks; a source checkout only)",
                       description="Run the benchmark suite of a source checkout; every argument goes "
                                   "to it (minicnn bench --help lists them).")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS")
    return p


def _study_variants():
    from minicnn.study.variants import VARIANTS
    return list(VARIANTS)


def variant_list(text):
    """argparse type for a study's --variants: a comma-separated, non-empty
    list of known names (:func:`minicnn.study.variants.parse_variant_list`)."""
    from minicnn.study.variants import parse_variant_list
    try:
        return parse_variant_list(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------------- commands
def _check_output_path(command, flag_name, path):
    """Fail before any work if ``path`` cannot be written: it is a folder,
    or its folder cannot be created or written to.  (Missing folders are
    created, as the writes would.)"""
    from minicnn.paths import make_writable_folder

    target = Path(path)
    if target.is_dir():
        raise SystemExit(f"minicnn {command}: {flag_name} {path}: is a folder; give a file path")
    problem = make_writable_folder(target.absolute().parent)
    if problem:
        raise SystemExit(f"minicnn {command}: {flag_name} {path}: {problem}")


RUN_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "schedule", "momentum", "grad_clip",
                "limit_train", "seed")
"""The settings of a training run that ``train --save`` stores in the
checkpoint and ``train --resume`` restores: flags left out on resume take
the saved values, so the resumed run is the one that was interrupted."""


def _run_settings(args, saved: dict | None):
    """The run's settings: each flag given, else the checkpoint's (resume),
    else the model's recipe or the default.  Returns ``(settings, changed)``,
    ``changed`` naming the flags that differ from the checkpoint's run."""
    from minicnn.models import MODELS

    recipe = MODELS[args.model].recipe
    defaults = {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "optimizer": recipe.optimizer,
                "lr": recipe.lr, "schedule": recipe.schedule, "momentum": 0.9, "grad_clip": None,
                "limit_train": None, "seed": 0}
    run, changed = {}, []
    for key in RUN_SETTINGS:
        given = getattr(args, key)
        if saved is not None and key in saved:
            run[key] = saved[key] if given is None else given
            if given is not None and given != saved[key]:
                changed.append(f"--{key.replace('_', '-')} {given} (the checkpoint's run: {saved[key]})")
        else:
            run[key] = defaults[key] if given is None else given
    return run, changed


def cmd_train(args) -> int:
    from minicnn import checkpoint
    from minicnn.checkpoint import CheckpointError
    from minicnn.data import ensure_mnist, load_mnist
    from minicnn.models import MODELS, build_model
    from minicnn.optim import SGD, Adam, OneCycleLR
    from minicnn.train import Trainer, evaluate

    extra, saved = {}, None
    if args.resume:
        model, meta, optim_arrays = checkpoint.load(args.resume)
        extra = meta["extra"]
        missing = [k for k in ("model_name", "epoch", "step", "running", "history") if k not in extra]
        if missing:
            raise CheckpointError(f"{args.resume}: no training state to resume from (missing "
                                  f"{', '.join(missing)}); it was not written by `minicnn train --save`")
        name = extra["model_name"]
        if name not in MODELS:
            raise CheckpointError(f"{args.resume}: model {name!r} is not one `minicnn train` builds "
                                  f"({', '.join(sorted(MODELS))})")
        if args.model is not None and args.model != name:
            raise SystemExit(f"minicnn train: --model {args.model} does not match the checkpoint's model {name}")
        args.model = name
        saved = extra.get("run")
        if saved is None:       # written before the run's settings were saved (2026-11-25)
            saved = {k: extra[k] for k in ("seed", "batch_size") if k in extra}
            print(f"note: {args.resume} holds no run settings beyond seed and batch size; "
                  "flags left out take the model's recipe", file=sys.stderr)
    args.model = args.model or "default"
    if args.data_dir and Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
        raise SystemExit(f"minicnn train: --data-dir {args.data_dir}: is a file; give the folder "
                         "that holds (or is to hold) the MNIST files")
    for flag_name, path in (("--save", args.save), ("--metrics", args.metrics)):
        if path:
            _check_output_path("train", flag_name, path)
    run, changed = _run_settings(args, saved)
    if args.resume and extra.get("optimizer", "").lower() not in ("", run["optimizer"]):
        raise SystemExit(f"minicnn train: --optimizer {run['optimizer']} does not match the checkpoint's "
                         f"optimiser {extra['optimizer']}")
    epochs, batch_size, opt_name, lr, schedule = (run[k] for k in ("epochs", "batch_size", "optimizer",
                                                                  "lr", "schedule"))
    args.seed = run["seed"]
    folder = ensure_mnist(args.data_dir, download=args.download)
    x, y = load_mnist(folder, "train", limit=run["limit_train"])
    x_test, y_test = load_mnist(folder, "test")
    if not args.resume:
        model = build_model(args.model, seed=args.seed)
    params = model.parameters()
    optimizer = Adam(params, lr=lr) if opt_name == "adam" else \
        SGD(params, lr=lr, momentum=run["momentum"], nesterov=run["momentum"] > 0)
    steps = epochs * -(-len(x) // batch_size)
    scheduler = OneCycleLR(optimizer, max_lr=lr, total_steps=steps) if schedule == "onecycle" else None
    resume_flags = "".join(f" {flag_name} {shlex.quote(value)}" for flag_name, value
                           in (("--data-dir", args.data_dir), ("--metrics", args.metrics)) if value)
    trainer = Trainer(model, optimizer, batch_size=batch_size, seed=args.seed, scheduler=scheduler,
                      grad_clip=run["grad_clip"], checkpoint_path=args.save or args.resume,
                      progress=not args.no_progress, model_name=args.model, run=run,
                      resume_flags=resume_flags)
    if args.resume:
        try:
            trainer.restore(extra, optim_arrays)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{args.resume}: its training state does not fit the model and "
                                  f"optimiser: {e}") from None
        if scheduler is None:
            optimizer.lr = lr           # the checkpoint's, or the --lr given
        print(f"resuming {args.model} from {args.resume} at epoch {trainer.epoch + 1}, step {trainer.step}")
        if changed:
            print("changed from the checkpoint's run: " + "; ".join(changed)
                  + " (so the result differs from the run's uninterrupted end)")
        if trainer.epoch >= epochs:
            print(f"{args.resume}: the run is already complete ({trainer.epoch} of {epochs} "
                  f"epoch{'s' if epochs != 1 else ''}); give --epochs N with N > {trainer.epoch} "
                  "to train further")
            return 0
    print(f"training {args.model} ({model.num_params():,} parameters) on {len(x):,} MNIST images: "
          f"{epochs} epoch{'s' if epochs != 1 else ''}, batch {batch_size}, {opt_name} lr {lr:g} ({schedule})")
    history = trainer.fit(x, y, epochs, x_test, y_test)
    for h in history:
        print(f"epoch {h['epoch']}: train loss {h['train_loss']:.4f}, train acc {h['train_accuracy']:.4f}, "
              f"test acc {h['test_accuracy']:.4f}, {h['seconds']:.1f} s")
    _, acc = evaluate(model, x_test, y_test)
    print(f"test accuracy: {100 * acc:.2f} % on {len(y_test):,} MNIST test images")
    if args.metrics:
        from minicnn.checkpoint import atomic_write_bytes
        metrics = {"model": args.model, "num_params": model.num_params(), "epochs": epochs,
                   "batch_size": batch_size, "optimizer": opt_name, "lr": lr, "schedule": schedule,
                   "seed": args.seed, "train_examples": len(x),
                   "train_loss": [h["train_loss"] for h in history],
                   "train_accuracy": [h["train_accuracy"] for h in history],
                   "seconds_per_epoch": [h["seconds"] for h in history],
                   "test_accuracy": acc, "history": history}
        atomic_write_bytes(args.metrics, json.dumps(metrics, indent=2).encode())
        print(f"metrics written to {args.metrics}")
    if args.save:
        print(f"checkpoint written to {args.save}")
    return 0


def cmd_evaluate(args) -> int:
    from minicnn import checkpoint
    from minicnn.data import load_mnist
    from minicnn.train import evaluate

    model, meta, _ = checkpoint.load(args.load)
    if model.input_shape is not None and tuple(model.input_shape) != (1, 28, 28):
        raise checkpoint.CheckpointError(f"{args.load}: the model takes input {tuple(model.input_shape)} "
                                         "(C, H, W); MNIST images are (1, 28, 28)")
    x_test, y_test = load_mnist(args.data_dir, "test")
    t0 = time.perf_counter()
    loss, acc = evaluate(model, x_test, y_test)
    print(f"{args.load}: test accuracy {100 * acc:.2f} %, loss {loss:.4f} on {len(y_test):,} images "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_summary(args) -> int:
    from minicnn.models import MODELS, build_model

    spec = MODELS[args.model]
    model = build_model(args.model)
    try:
        table = model.summary(args.input_shape or spec.input_shape)
    except ValueError as e:
        shape = ",".join(map(str, args.input_shape or spec.input_shape))
        print(f"minicnn summary: --input-shape {shape} does not fit model {args.model}: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"\n{spec.description}")
    return 0


def cmd_gradcheck(args) -> int:
    from minicnn.gradcheck_cases import CASES, run_cases

    names = args.layers or []
    unknown = [n for n in names if not n.strip()
               or not any(c.name.lower().startswith(n.lower()) for c in CASES)]
    if unknown:
        listing = "".join(f"\n  {c.name}" for c in CASES)
        print(f"minicnn gradcheck: error: --layers {', '.join(map(repr, unknown))} names no case; "
              f"the cases (give the start of a name):{listing}", file=sys.stderr)
        return 2
    return 0 if run_cases(names or None, seed=args.seed) else 1


def cmd_study(args) -> int:
    from minicnn.study import StudyConfig, StudyError, interrupted_message, run_study
    from minicnn.train import TrainingInterrupted

    if not args.quick and args.seeds is not None and args.seeds < 3:
        print("minicnn study: error: the full mode needs --seeds >= 3 (use --quick for fewer)", file=sys.stderr)
        return 2
    flags = {"seeds": args.seeds, "epochs": args.epochs, "limit_train": args.limit_train,
             "limit_test": args.limit_test, "limit_shift": args.limit_shift, "lr": args.lr,
             "variants": args.variants}
    try:
        cfg = StudyConfig.quick_mode(**flags) if args.quick else \
            StudyConfig(**{k: v for k, v in flags.items() if v is not None})
        run_study(cfg, run_dir=args.run_dir, data_dir=args.data_dir, plots=not args.no_plots,
                  progress=not args.no_progress)
    except StudyError as e:
        print(f"minicnn study: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"\nminicnn study: {interrupted_message(e.checkpoint)}", file=sys.stderr)
        return 130
    return 0


def _benchmarks_root():
    """The source checkout holding ``benchmarks/`` beside this package, or
    None (an installed wheel has no benchmarks)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def cmd_bench(bench_args) -> int:
    """``minicnn bench ARGS``: ``python -m benchmarks ARGS`` of the checkout
    this minicnn is installed from (editable install or source tree).
    :func:`main` hands it every argument after ``bench`` unparsed, options
    first included (argparse's REMAINDER would not take a leading
    ``--quick``)."""
    root = _benchmarks_root()
    if root is None:
        print("minicnn bench: the benchmark suite is the benchmarks/ folder of the source repository, "
              f"and this installation ({Path(__file__).resolve().parent}) has none beside it; "
              "run `python -m benchmarks` from a clone's root, or install minicnn from a clone "
              "with `pip install -e .`", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench_main
    return bench_main(list(bench_args))


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "summary": cmd_summary,
            "gradcheck": cmd_gradcheck, "study": cmd_study}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from minicnn.checkpoint import CheckpointError
    from minicnn.data import MNISTFormatError, MNISTNotFoundError
    from minicnn.download import DownloadError
    from minicnn.train import NonFiniteError, TrainingInterrupted

    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\naborted", file=sys.stderr)
        return 130
    except (MNISTNotFoundError, MNISTFormatError, DownloadError, CheckpointError, NonFiniteError,
            FileNotFoundError) as e:
        print(f"minicnn {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
