"""``python -m benchmarks``: run the benchmark sections and write the report.

    python -m benchmarks                    # full run (~15 min on 2 cores)
    python -m benchmarks --quick            # smaller run (~3 min)
    python -m benchmarks --only pooling,conv --repeats 3 --out /tmp/bench

Results: ``<out>/<date>-<host>[-quick].md`` and ``.json`` beside it; an
existing report is never replaced: a later run the same day is written as
``<date>-<host>[-quick]-2``, ``-3``, ...  ``--out`` is checked (a folder, or
created as one) before any section runs.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass

from benchmarks import RESULTS as DEFAULT_OUT, SECTIONS
from minicnn.cli import number
from minicnn.paths import make_writable_folder


@dataclass
class Context:
    """What every section's ``run(ctx)`` gets."""
    timing: object
    np_timing: object
    copy: object
    torch: object
    quick: bool
    tiny: bool
    data_dir: str | None
    contend: bool


def _sections(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"empty list of sections {text!r}; give one or more of "
                                         f"{', '.join(SECTIONS)}, comma-separated")
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    return names


_positive_int = number(int, 1, "a positive integer")
_seconds = number(float, 0.0, "a number of seconds >= 0")     # --min-sample; 0: one call per sample


def _out_problem(out):
    """None when ``out`` is a writable folder (created, with its parents, if
    missing), else why not, one line naming ``--out``.  Checked before any
    section runs, so a bad ``--out`` does not lose a run's results."""
    if not out:
        return "argument --out: expected a folder, got ''"
    if os.path.exists(out) and not os.path.isdir(out):
        return f"argument --out: {out} is a file; --out must be a folder (created if missing)"
    problem = make_writable_folder(out)
    return f"argument --out: {problem}" if problem else None


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark minicnn beside a memory-copy roof, naive numpy references and PyTorch CPU "
                    "(when importable). Writes Markdown and JSON results.")
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes, repeats and steps (about 3 minutes on 2 cores)")
    p.add_argument("--only", type=_sections, metavar="SECTIONS",
                   help=f"comma-separated sections to run (default: all): {','.join(SECTIONS)}")
    p.add_argument("--repeats", type=_positive_int, metavar="N",
                   help="timed samples per figure; the median and min are reported (default 7, quick 3)")
    p.add_argument("--min-sample", type=_seconds, default=0.02, metavar="SECONDS",
                   help="inner-loop calls until one sample lasts at least this long (default 0.02; "
                        "0: one call per sample)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="output folder, created if missing (default benchmarks/results); an existing "
                        "report is never replaced: a later run the same day gets -2, -3, ...")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch columns even if torch imports")
    p.add_argument("--no-contend", action="store_true",
                   help="thread study: skip the contended scenario (busy-loop processes on every core)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="MNIST folder (default: minicnn's search: $MINICNN_DATA, then the cache); "
                        "synthetic data of the same shape is used when MNIST is not found")
    p.add_argument("--tiny", action="store_true",
                   help="test hook: tiny shapes and step counts, to check the harness runs (figures meaningless)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _out_problem(args.out)
    if problem:
        parser.error(problem)
    from benchmarks import harness, report
    from benchmarks.harness import Timing, log

    t_start = time.perf_counter()
    sections = args.only or list(SECTIONS)
    repeats = args.repeats or (1 if args.tiny else 3 if args.quick else 7)
    min_sample = 0.001 if args.tiny else args.min_sample
    timing = Timing(repeats=repeats, min_sample=min_sample, warmup=1 if args.tiny else 2)
    np_timing = Timing(repeats=min(repeats, 3), min_sample=min_sample, warmup=1)
    load_start = harness.loadavg()

    import numba

    need_torch = any(s in sections for s in ("pooling", "conv", "training"))
    harness.start_numba_pool()       # before torch: one OpenMP runtime, not two (see the docstring)
    torch = harness.load_torch(numba.get_num_threads(), enabled=need_torch and not args.no_torch)
    ctx = Context(timing=timing, np_timing=np_timing, copy=harness.CopyRoof(timing), torch=torch,
                  quick=args.quick, tiny=args.tiny, data_dir=args.data_dir, contend=not args.no_contend)
    mode = "tiny (harness check; figures meaningless)" if args.tiny else "quick" if args.quick else "full"
    results = {"meta": {"mode": mode, "sections": sections,
                        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
                        "timing": f"median (min) of {repeats} samples, each >= {min_sample * 1e3:g} ms of "
                                  f"back-to-back calls after {timing.warmup} warm-up call(s); numpy references "
                                  f"{np_timing.repeats} samples",
                        "loadavg_start": load_start},
               "records": []}
    if load_start and load_start[0] > 0.5 * (os.cpu_count() or 1):
        results["meta"]["warning"] = (f"Load average {load_start[0]:.2f} on {os.cpu_count()} CPUs at start: "
                                      "the machine was busy, figures are noisy.")
    log(f"benchmarks: {mode}, sections {','.join(sections)}, torch "
        f"{'yes' if torch is not None else 'no'}, numba threads {numba.get_num_threads()}")

    from benchmarks import compile as compile_, conv, experiments, memory, pooling, threads, training

    for name in sections:
        t0 = time.perf_counter()
        log(f"== {name}")
        try:
            if name == "pooling":
                results["records"] += pooling.run(ctx)
            elif name == "conv":
                results["records"] += conv.run(ctx)
            elif name == "training":
                recs, data_note = training.run(ctx)
                results["records"] += recs
                results["meta"]["data"] = data_note
            elif name == "compile":
                results["compile"] = compile_.run(ctx)
            elif name == "memory":
                results["memory"] = memory.run(ctx)
            elif name == "threads":
                results["threads"] = threads.run(ctx)
            elif name == "experiments":
                results["experiments"] = experiments.run(ctx)
        except Exception as e:  # one broken section must not lose the others
            import traceback

            traceback.print_exc()
            results.setdefault("errors", []).append(f"{name}: {type(e).__name__}: {e}")
        log(f"   {name}: {time.perf_counter() - t0:.1f} s")

    results["environment"] = harness.environment(torch)
    results["kernel_options"] = harness.kernel_options()
    results["meta"]["loadavg_end"] = harness.loadavg()
    results["meta"]["wall"] = time.perf_counter() - t_start
    results["targets"] = report.targets(results)
    suffix = "-tiny" if args.tiny else "-quick" if args.quick else ""
    date = time.strftime("%Y-%m-%d")
    md, js = report.write(results, args.out, suffix=suffix, date=date)
    first = report.output_paths(args.out, results["environment"].get("host", "host"), date=date, suffix=suffix)[0]
    if md != first:
        log(f"{first} exists: not replaced; this run's report gets the next free name")
    log(f"wrote {md}\nwrote {js}")
    for t in results["targets"]:
        log(f"  {'PASS' if t['pass'] else 'FAIL' if t['pass'] is False else '----'}  {t['target']}: {t['measured']}")
    if results.get("errors"):
        log("errors: " + "; ".join(results["errors"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
