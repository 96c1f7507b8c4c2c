"""Records, ratios, targets and the Markdown / JSON writers.

A *record* is one measured figure with everything it stands beside::

    {"section": "pooling", "name": "MaxPool2D", "config": "2x2/2", "shape": "64x32x28x28",
     "phase": "fwd+bwd",
     "times": {"minicnn": {"median": s, "min": s, "samples": [...], "inner": n},
               "copy": {...}, "numpy": {...}, "torch": {...} or None, "torch_cl": ...},
     "ratios": {"torch/minicnn": ..., ...}, "notes": "..."}

Times are seconds per call.  Ratios are of medians and are computed here,
from the times, never typed in.  Targets (:func:`targets`) are computed from
the ratios the same way: a target that was not measured says so.
"""
from __future__ import annotations

import json
import os
import re
import time

from benchmarks import SECTIONS
from benchmarks.harness import Stats, atomic_write, ratio

IMPLS = ("minicnn", "copy", "numpy", "torch", "torch_cl")
RATIOS = (  # name, numerator, denominator
    ("minicnn/torch", "minicnn", "torch"),
    ("torch/minicnn", "torch", "minicnn"),
    ("torch_cl/minicnn", "torch_cl", "minicnn"),
    ("minicnn/copy", "minicnn", "copy"),
    ("numpy/minicnn", "numpy", "minicnn"),
)

GB = 1 << 30


def _times_dict(t):
    if t is None:
        return None
    if isinstance(t, Stats):
        return t.to_dict()
    if isinstance(t, (int, float)):
        return {"median": float(t), "min": float(t), "samples": [float(t)], "inner": 1}
    return dict(t)


def median_of(rec, impl):
    t = rec["times"].get(impl)
    return None if t is None else t["median"]


def ratios(rec) -> dict:
    return {name: ratio(median_of(rec, a), median_of(rec, b)) for name, a, b in RATIOS}


def make_record(section, name, phase, times, config="", shape="", notes="", **extra) -> dict:
    """One figure; ``times`` maps an implementation (see IMPLS) to a
    :class:`Stats`, a number of seconds, a stats dict, or None."""
    rec = {"section": section, "name": name, "config": config, "shape": shape, "phase": phase,
           "times": {k: _times_dict(times.get(k)) for k in IMPLS}, "notes": notes}
    rec.update(extra)
    rec["ratios"] = ratios(rec)
    return rec


def find(records, section, name=None, phase=None, **match):
    return [r for r in records if r["section"] == section and (name is None or r["name"] == name)
            and (phase is None or r["phase"] == phase)
            and all(r.get(k) == v for k, v in match.items())]


# ------------------------------------------------------------------ targets
def _target(what, measured, ok, detail=""):
    return {"target": what, "measured": measured, "pass": ok, "detail": detail}


def _fmt_x(r):
    if r is None:
        return "—"
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def _fmt_vs(r, need, at_most=False):
    """:func:`_fmt_x` of a ratio checked against the threshold ``need``
    (``r >= need`` passes, or ``r <= need`` if ``at_most``), with more
    decimals where the usual rounding would show it on the other side of
    ``need``: 2.996 against ">= 3" is "2.996×", not "3.00×"."""
    text = _fmt_x(r)
    if r is None:
        return text

    def passes(v):
        return v <= need if at_most else v >= need
    for digits in range(3, 10):
        if passes(float(text.rstrip("×"))) == passes(r):
            return text
        text = f"{r:.{digits}f}×"
    return f"{r!r}×"                     # the shortest text that reads back as r


def targets(results: dict) -> list[dict]:
    """The issue's targets, each PASS / FAIL / None (not measured), computed
    from the measured ratios of this run."""
    recs = results.get("records", [])
    out = []

    pool = [r for r in find(recs, "pooling", phase="fwd+bwd") if r.get("torch_kind") == "builtin"]
    emulated = [r for r in find(recs, "pooling", phase="fwd+bwd") if r.get("torch_kind") == "emulation"]
    for key, need, what in (("torch/minicnn", 3.0, "every pooling fwd+bwd >= 3x faster than PyTorch NCHW"),
                            ("torch_cl/minicnn", 1.0,
                             "every pooling fwd+bwd no slower than PyTorch channels_last")):
        vals = [(r, r["ratios"][key]) for r in pool if r["ratios"][key] is not None]
        if not vals:
            out.append(_target(what, "not measured (no PyTorch)", None))
            continue
        bad = [(r, v) for r, v in vals if v < need]
        worst = min(vals, key=lambda rv: rv[1])
        measured = (f"{len(vals) - len(bad)}/{len(vals)} cases pass; worst {worst[0]['name']} "
                    f"{worst[0]['config']} {worst[0]['shape']}: {_fmt_vs(worst[1], need)} (speedup of minicnn)")
        detail = "; ".join(f"{r['name']} {r['config']} {r['shape']} {_fmt_vs(v, need)}" for r, v in bad)
        if emulated:
            detail += (" | not counted (PyTorch has no such layer, torch column is an emulation): "
                       + ", ".join(sorted({r["name"] for r in emulated})))
        out.append(_target(what, measured, not bad, detail))

    ep = find(recs, "training", "lenet", "epoch")
    r = ep[0]["ratios"]["minicnn/torch"] if ep else None
    out.append(_target("one LeNet epoch <= 1.0x PyTorch's time (batch 64)",
                       "not measured" if r is None else f"minicnn/torch = {_fmt_vs(r, 1.0, at_most=True)}",
                       None if r is None else r <= 1.0,
                       ep[0]["notes"] if ep else ""))

    # Per epoch, as the anchors are (numpy 20 s vs PyTorch 2.4 s for
    # the LeNet epoch): minicnn's real epoch (batches drawn, shuffled, all of
    # it) against the numpy net's first batches of that epoch, timed in
    # alternating slices (training.interleaved_epochs) and scaled.  The step
    # ratio is shown beside it.
    for model in ("lenet", "default"):
        ep = find(recs, "training", model, "epoch")
        st = find(recs, "training", model, "step")
        r = ep[0]["ratios"]["numpy/minicnn"] if ep else None
        rs = st[0]["ratios"]["numpy/minicnn"] if st else None
        out.append(_target(f"training ({model} epoch) >= 8x faster than the naive numpy reference",
                           "not measured" if r is None else f"numpy/minicnn = {_fmt_vs(r, 8.0)}",
                           None if r is None else r >= 8.0,
                           "" if rs is None else f"one step (fixed batch): numpy/minicnn = {_fmt_x(rs)}"))

    comp = results.get("compile") or {}
    warm = (comp.get("default") or {}).get("warm") or {}
    w = warm.get("wall")
    walls = warm.get("walls") or []
    details = []
    if len(walls) > 1:
        details.append(f"median of {len(walls)} runs: " + ", ".join(f"{x:.2f} s" for x in walls))
    hidden = (comp.get("default") or {}).get("warm_without_scipy") or {}
    if hidden.get("wall") is not None:
        details.append(f"with SciPy hidden (as without it installed): {hidden['wall']:.2f} s"
                       + ("" if hidden.get("returncode") == 0 else " (FAILED)"))
    out.append(_target("warm start (import + first training batch, cached kernels) <= 2 s",
                       "not measured" if w is None else f"{w:.2f} s",
                       None if w is None else (w <= 2.0 and warm.get("returncode") == 0), "; ".join(details)))

    mem = (results.get("memory") or {}).get("default") or {}
    rss = mem.get("max_rss")
    out.append(_target("peak RSS of default `minicnn train` <= 1 GB",
                       "not measured" if rss is None else f"{rss / GB:.3f} GB ({rss / 2**20:.0f} MiB)",
                       None if rss is None else (rss <= GB and mem.get("returncode") == 0),
                       mem.get("command", "")))
    return out


# --------------------------------------------------------------- formatting
def fmt_time(s):
    """Seconds -> '12.3 ms' / '2.41 s' / '35.2 µs'; None -> '—'."""
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    ms = s * 1e3
    if ms >= 1:
        return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{s * 1e6:.3g} µs"


def _cell_time(rec, impl, with_min=False):
    t = rec["times"].get(impl)
    if t is None:
        return "—"
    if with_min and t["min"] != t["median"]:
        return f"{fmt_time(t['median'])} ({fmt_time(t['min'])})"
    return fmt_time(t["median"])


def md_table(headers, rows) -> str:
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


TIME_COLUMNS = [("minicnn median (min)", lambda r: _cell_time(r, "minicnn", True)),
                ("copy roof", lambda r: _cell_time(r, "copy")),
                ("numpy", lambda r: _cell_time(r, "numpy")),
                ("torch NCHW", lambda r: _cell_time(r, "torch")),
                ("torch CL", lambda r: _cell_time(r, "torch_cl"))]
RATIO_COLUMNS = [("mc/torch", lambda r: _fmt_x(r["ratios"]["minicnn/torch"])),
                 ("torch/mc", lambda r: _fmt_x(r["ratios"]["torch/minicnn"])),
                 ("torchCL/mc", lambda r: _fmt_x(r["ratios"]["torch_cl/minicnn"])),
                 ("mc/copy", lambda r: _fmt_x(r["ratios"]["minicnn/copy"])),
                 ("numpy/mc", lambda r: _fmt_x(r["ratios"]["numpy/minicnn"]))]


def records_table(recs, columns=None) -> str:
    columns = columns or (TIME_COLUMNS + RATIO_COLUMNS)
    used = [c for c in columns if any(c[1](r) != "—" for r in recs)]
    head = [("layer / model", lambda r: r["name"]), ("config", lambda r: r["config"]),
            ("shape", lambda r: r["shape"]), ("phase", lambda r: r["phase"])]
    cols = head + used
    return md_table([c[0] for c in cols], [[c[1](r) for c in cols] for r in recs])


def _pf(ok):
    return {True: "**PASS**", False: "**FAIL**", None: "not measured"}[ok]


def partial_sections(meta: dict) -> list | None:
    """The sections a ``--only`` run ran (``meta["sections"]``), or None
    when it ran all of :data:`~benchmarks.SECTIONS` (in any order)."""
    run = list(meta.get("sections", SECTIONS))
    return None if set(run) == set(SECTIONS) else run


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    meta = results.get("meta", {})
    recs = results.get("records", [])
    run = partial_sections(meta)
    part = f" of {', '.join(run)} only" if run else ""
    L = [f"# minicnn benchmarks: {meta.get('mode', '')} run{part}, {env.get('date', '')}, {env.get('host', '')}",
         ""]
    if meta.get("warning"):
        L += [f"> {meta['warning']}", ""]
    if results.get("errors"):
        L += ["## Errors", "", "These sections failed; their figures are missing:", ""]
        L += [f"- {e}" for e in results["errors"]] + [""]
    L += ["## Environment", ""]
    blas = env.get("blas", {})
    rows = [("CPU", f"{env.get('cpu_model')} ({env.get('cpus_usable')} usable of {env.get('cpus_online')}); "
                    f"flags {' '.join(env.get('cpu_flags', [])) or '?'}"),
            ("load average at start / end", f"{_la(meta.get('loadavg_start'))} / {_la(meta.get('loadavg_end'))}"),
            ("Python / numpy / numba / minicnn",
             f"{env.get('python')} / {env.get('numpy')} / {env.get('numba')} / {env.get('minicnn')}"),
            ("minicnn commit", env.get("commit") or "not recorded"),
            ("Numba threads / threading layer", f"{env.get('numba_threads')} / {env.get('numba_threading_layer')}"),
            ("OpenMP runtimes loaded", ", ".join(env.get("openmp_runtimes", [])) or "?"),
            ("PyTorch (threads, interop)",
             f"{env.get('torch')} ({env.get('torch_threads')}, {env.get('torch_interop_threads')})"
             if env.get("torch") else "not available: torch columns are empty"),
            ("numpy BLAS", f"{blas.get('name')} {blas.get('version')}; {blas.get('runtime config') or blas.get('openblas configuration', '')}; "
                           f"threads {blas.get('threads', '?')}"),
            ("thread env vars", ", ".join(f"{k}={v}" for k, v in env.get("thread_env", {}).items()) or "none set"),
            ("timing", meta.get("timing", "")),
            ("training data", meta.get("data", "")),
            ("command", meta.get("command", "")),
            ("wall time of this run", fmt_time(meta.get("wall")))]
    L += [md_table(["", ""], rows), ""]

    L += ["## Targets", "",
          "Computed from the ratios measured in this run (never typed in). "
          "`not measured` = the section was not run or PyTorch is missing.", ""]
    L += [md_table(["target", "measured", "result", "detail"],
                   [(t["target"], t["measured"], _pf(t["pass"]), t["detail"]) for t in results.get("targets", [])]),
          ""]

    sections = [("pooling", "Pooling", "Float32 NCHW. `copy roof` = `np.copyto` of input+output bytes "
                 "(fwd: x+y; bwd: dy+dx; fwd+bwd: both), single-threaded. torch CL = channels_last. "
                 "Ratios are of medians; `mc/torch` < 1 and `torch/mc` > 1 mean minicnn is faster."),
                ("conv", "Convolution (Conv2D 3x3, padding 1)", "numpy = textbook im2col with fancy "
                 "indexing, col2im with `np.add.at`."),
                ("training", "Training", "step = forward + loss + backward + optimiser update on one "
                 "batch of 64 (minicnn: `Trainer.train_step`). epoch = one pass over the training set "
                 "(minicnn: `Trainer.fit`, no progress bar, no evaluation).")]
    for key, title, blurb in sections:
        rs = [r for r in recs if r["section"] == key]
        if rs:
            L += [f"## {title}", "", blurb, "", records_table(rs), ""]
            notes = sorted({f"{r['name']}: {r['notes']}" for r in rs if r.get("notes")})
            if notes:
                L += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]

    comp = results.get("compile")
    if comp:
        L += ["## Numba compile time and warm start", "",
              "Subprocess wall time of `python -m benchmarks.compile --child ...` (import minicnn, "
              "build the model, one training step of batch 64, plus the named pooling layers). "
              "cold = fresh empty `NUMBA_CACHE_DIR`; warm = the same directory again (cache hits), "
              "run several times: the wall is their median, and the split columns are that run's. "
              "The split counts the import from just before `import minicnn`; the wall adds "
              "Python's own start-up and exit. \"warm, SciPy hidden\" (when SciPy is installed): after "
              "each warm run, one with `import scipy` made to fail, as on a machine without SciPy; with it, "
              "Numba imports `scipy.linalg` when it loads its first kernel. The target is judged on "
              "the plain warm runs.", ""]
        rows = []
        for what, d in comp.items():
            if not isinstance(d, dict) or "cold" not in d:
                continue
            for kind in ("cold", "warm", "warm_without_scipy"):
                if kind not in d:
                    continue
                c = d[kind]
                j = c.get("child") or {}
                walls = c.get("walls")
                runs = ", ".join(f"{w:.2f}" for w in walls) if walls else "—"
                scipy = {True: "yes", False: "no"}.get(j.get("scipy_loaded"), "—")
                rows.append((what, kind.replace("_without_scipy", ", SciPy hidden"), fmt_time(c.get("wall")),
                             runs, fmt_time(j.get("import_s")), fmt_time(j.get("first_step_s")),
                             j.get("numba_cache_files", "—"), scipy, c.get("returncode")))
        L += [md_table(["workload", "cache", "wall (median)", "each run (s)", "import minicnn",
                        "first step (+layers)", "cache files", "SciPy imported", "exit"], rows), ""]

    mem = results.get("memory")
    if mem:
        L += ["## Peak memory", "", "Peak RSS of each child process (`os.wait4` ru_maxrss). The first rows run "
              "the CLI; the `default: ...` rows each run one part of it (loading data, the training steps, "
              "the test-set evaluation) to show which part sets the peak.", ""]
        rows = [(k, f"{v['max_rss'] / 2**20:.0f} MiB", v.get("steps", "—"), fmt_time(v.get("wall")),
                 v.get("returncode"), v.get("data", ""), v.get("command", ""))
                for k, v in mem.items() if isinstance(v, dict) and "max_rss" in v]
        L += [md_table(["run", "peak RSS", "train steps", "wall", "exit", "data", "command"], rows), ""]

    thr = results.get("threads")
    if thr:
        L += threads_markdown(thr)

    exp = results.get("experiments")
    if exp:
        L += ["## Experiments: candidate kernel changes", "",
              "Measured in this run on the shape named; the candidate kernels live in "
              "`benchmarks/experiments.py` (the library is unchanged).", ""]
        L += [md_table(["experiment", "shape", "current median (min)", "candidate median (min)",
                        "current/candidate", "same result", "note"],
                       [(e["name"], e["shape"], _med_min(e["current"]), _med_min(e["candidate"]),
                         _fmt_x(ratio(e["current"]["median"], e["candidate"]["median"])),
                         e.get("same", "—"), e.get("note", "")) for e in exp]), ""]

    ko = results.get("kernel_options")
    if ko:
        L += ["## Numba practice: kernel options", "",
              "Every dispatcher in `minicnn.kernels` (cache = a real on-disk cache, not NullCache).", ""]
        L += [md_table(["kernel", "cache", "parallel", "fastmath"],
                       [(f"{k['module']}.{k['name']}", k["cache"], k["parallel"], k["fastmath"]) for k in ko]),
              ""]
    return "\n".join(L) + "\n"


def threads_markdown(thr) -> list[str]:
    L = ["## Thread oversubscription study", "",
         "One training step (batch 64) per thread configuration, each configuration in its own subprocess "
         "(pools are sized at start-up), started from an environment without thread variables. "
         "step median = median over rounds of each child's median step; steps = timed steps in all rounds. "
         "`quiet` = no load added by us (the load average column shows what else ran); `contended` = "
         "one busy-loop process per CPU running throughout. Load average: just before the first child.", ""]
    rows = []
    for r in thr.get("runs", []):
        base = r.get("baseline")
        rows.append((r["model"], r["scenario"], r["config"], f"{r.get('numba_threads')} / {r.get('blas_threads')}",
                     fmt_time(r.get("median")), fmt_time(r.get("min")),
                     _fmt_x(ratio(r.get("median"), base)) if base else "—", r.get("steps", "—"),
                     _la(r.get("loadavg")), r.get("error", "")))
    L += [md_table(["model", "scenario", "threads config", "numba / BLAS threads", "step median", "step min",
                    "vs default", "steps", "load avg", "error"], rows), ""]
    if thr.get("recommendation"):
        L += ["**Recommendation (computed from the table):** " + thr["recommendation"], ""]
    return L


def _med_min(t):
    return f"{fmt_time(t['median'])} ({fmt_time(t['min'])})"


def _la(v):
    return "—" if not v else " ".join(f"{x:.2f}" for x in v)


# ------------------------------------------------------------------ writing
def output_paths(out_dir, host, date=None, suffix="", n=1):
    """``<out_dir>/<date>-<host><suffix>.md`` and ``.json``; for ``n`` > 1
    (a later report of the same day, see :func:`write`) ``-<n>`` is appended."""
    date = date or time.strftime("%Y-%m-%d")
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", host) or "host"
    base = os.path.join(out_dir, f"{date}-{host}{suffix}" + (f"-{n}" if n > 1 else ""))
    return base + ".md", base + ".json"


def write(results: dict, out_dir: str, suffix="", date=None) -> tuple[str, str]:
    """Write Markdown and JSON beside it, each atomically; returns the paths.

    An existing report is never replaced: when ``<date>-<host><suffix>`` is
    taken (an earlier run the same day, or either of its two files), the
    first free name of ``...-2``, ``-3``, ... is used."""
    host = results.get("environment", {}).get("host", "host")
    js = json.dumps(results, indent=1, default=_json_default) + "\n"
    n = 1
    while True:
        md_path, json_path = output_paths(out_dir, host, date=date, suffix=suffix, n=n)
        if not (os.path.lexists(md_path) or os.path.lexists(json_path)) and atomic_write(json_path, js, replace=False):
            break
        n += 1
    atomic_write(md_path, markdown(results))
    return md_path, json_path


def _json_default(o):
    if isinstance(o, Stats):
        return o.to_dict()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv=None) -> int:
    """``python -m benchmarks.report RESULTS.json``: write the Markdown again
    from a results JSON (e.g. after a formatting change), beside it."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="Re-render the Markdown report from a results JSON file.")
    p.add_argument("json_path")
    a = p.parse_args(argv)
    with open(a.json_path, encoding="utf-8") as f:
        results = json.load(f)
    results["targets"] = targets(results)
    md_path = os.path.splitext(a.json_path)[0] + ".md"
    atomic_write(md_path, markdown(results))
    print(md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
