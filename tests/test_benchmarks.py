"""The benchmark harness: statistics, ratios, targets, writers, the naive
references (they must compute what minicnn computes), the Numba practice
checks, and a smoke run.  No test here asserts anything about a timing.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minicnn as mc
from benchmarks import harness, references as R, report
from benchmarks.harness import Stats, Timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = harness.clean_env()
    env.update(extra)
    return env


# ------------------------------------------------------------ statistics
def test_median_odd_even_and_empty():
    assert harness.median([3, 1, 2]) == 2
    assert harness.median([4, 1, 3, 2]) == 2.5
    assert harness.median([5.0]) == 5.0
    with pytest.raises(ValueError):
        harness.median([])


def test_ratio_handles_missing_and_zero():
    assert harness.ratio(6.0, 2.0) == 3.0
    assert harness.ratio(None, 2.0) is None
    assert harness.ratio(1.0, None) is None
    assert harness.ratio(1.0, 0.0) is None
    assert harness.ratio(float("nan"), 1.0) is None


def test_calls_per_sample():
    assert harness.calls_per_sample(0.001, 0.02) == 20
    assert harness.calls_per_sample(0.5, 0.02) == 1
    assert harness.calls_per_sample(0.0, 0.02, max_inner=50) == 50
    assert harness.calls_per_sample(1e-9, 0.02, max_inner=1000) == 1000


def test_measure_with_a_fake_clock():
    """Each call advances a fake clock by 2 ms: warm-up calls are not timed,
    the inner loop reaches min_sample, every sample is 2 ms per call."""
    state = {"t": 0.0, "calls": 0}

    def clock():
        return state["t"]

    def fn():
        state["calls"] += 1
        state["t"] += 0.002

    st = harness.measure(fn, Timing(repeats=5, min_sample=0.02, warmup=3), clock=clock)
    assert st.inner == 10
    assert len(st.samples) == 5
    assert st.median == pytest.approx(0.002) and st.min == pytest.approx(0.002)
    assert state["calls"] == 3 + 1 + 5 * 10


def test_measure_interleaved_alternates_and_spreads_fewer_repeats():
    """Two functions on a fake clock (a: 2 ms per call, b: 5 ms): each gets
    its own calls per sample; the samples alternate with the order rotating
    each round, and b's 2 samples fall in rounds spread over a's 4."""
    state = {"t": 0.0}
    log = []

    def make(name, dt):
        def fn():
            state["t"] += dt
            log.append(name)
        return fn

    st = harness.measure_interleaved(
        {"a": make("a", 0.002), "b": make("b", 0.005)},
        {"a": Timing(repeats=4, min_sample=0.02, warmup=1), "b": Timing(repeats=2, min_sample=0.02, warmup=1)},
        clock=lambda: state["t"])
    assert (st["a"].inner, st["b"].inner) == (10, 4)
    assert len(st["a"].samples) == 4 and len(st["b"].samples) == 2
    assert st["a"].median == pytest.approx(0.002) and st["b"].median == pytest.approx(0.005)
    timed = log[2 + 2:]                                    # after warm-up + one sizing call each
    runs = []                                              # (name, calls) of consecutive calls
    for name in timed:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    # rounds 0..3 in the orders (a b), (b a), (a b), (b a); b samples only in rounds 1 and 3
    # (spread evenly), so: a | b a | a | b a  (adjacent a samples merge in this list)
    assert runs == [["a", 10], ["b", 4], ["a", 20], ["b", 4], ["a", 10]]


def test_stats_from_samples():
    st = Stats.from_samples([0.3, 0.1, 0.2], inner=4)
    assert (st.median, st.min, st.inner) == (0.2, 0.1, 4)
    assert st.to_dict() == {"median": 0.2, "min": 0.1, "samples": [0.3, 0.1, 0.2], "inner": 4}


# ------------------------------------------------------- records, targets
def _rec(section, name, phase, **medians):
    return report.make_record(section, name, phase, {k: Stats(v, v, [v]) for k, v in medians.items()},
                              config="cfg", shape="1x2x3x4",
                              torch_kind="builtin" if section == "pooling" else None)


def test_record_ratios_are_computed_from_the_times():
    r = _rec("pooling", "MaxPool2D", "fwd+bwd", minicnn=1.0, torch=4.0, torch_cl=0.5, copy=0.25, numpy=30.0)
    assert r["ratios"] == {"minicnn/torch": 0.25, "torch/minicnn": 4.0, "torch_cl/minicnn": 0.5,
                           "minicnn/copy": 4.0, "numpy/minicnn": 30.0}
    assert set(r["times"]) == set(report.IMPLS)
    assert r["times"]["minicnn"]["median"] == 1.0
    r2 = report.make_record("conv", "c", "fwd", {"minicnn": 0.5, "torch": None})
    assert r2["ratios"]["torch/minicnn"] is None and r2["times"]["torch"] is None
    assert r2["times"]["minicnn"]["median"] == 0.5


def _results(pool_ratio_nchw=4.0, pool_ratio_cl=1.5, lenet_epoch=(2.0, 2.4), steps=(0.002, 0.05),
             warm=1.5, rss=300 << 20):
    recs = [_rec("pooling", "MaxPool2D", "fwd+bwd", minicnn=1.0, torch=pool_ratio_nchw, torch_cl=pool_ratio_cl),
            _rec("pooling", "AvgPool2D", "fwd+bwd", minicnn=1.0, torch=10.0, torch_cl=10.0),
            _rec("pooling", "MaxPool2D", "fwd", minicnn=1.0, torch=0.1, torch_cl=0.1)]  # fwd is not a target
    emu = _rec("pooling", "StochasticPool2D", "fwd+bwd", minicnn=1.0, torch=0.1, torch_cl=0.1)
    emu["torch_kind"] = "emulation"
    recs.append(emu)
    # numpy's epoch (20 s, the anchor) is its step x batches per epoch
    recs.append(_rec("training", "lenet", "epoch", minicnn=lenet_epoch[0], torch=lenet_epoch[1], numpy=20.0))
    recs.append(_rec("training", "lenet", "step", minicnn=steps[0], numpy=steps[1]))
    return {"records": recs,
            "compile": {"default": {"warm": {"wall": warm, "returncode": 0}}},
            "memory": {"default": {"max_rss": rss, "returncode": 0, "command": "minicnn train"}}}


def _by_target(ts):
    return {t["target"]: t for t in ts}


def test_targets_pass_when_every_ratio_is_met():
    ts = report.targets(_results())
    ok = {t["target"]: t["pass"] for t in ts}
    assert ok["every pooling fwd+bwd >= 3x faster than PyTorch NCHW"] is True
    assert ok["every pooling fwd+bwd no slower than PyTorch channels_last"] is True
    assert ok["one LeNet epoch <= 1.0x PyTorch's time (batch 64)"] is True
    lenet = _by_target(ts)["training (lenet epoch) >= 8x faster than the naive numpy reference"]
    assert lenet["pass"] is True and "10.0×" in lenet["measured"] and "25.0×" in lenet["detail"]  # 20/2, 0.05/0.002
    assert ok["training (default epoch) >= 8x faster than the naive numpy reference"] is None  # not measured
    assert ok["warm start (import + first training batch, cached kernels) <= 2 s"] is True
    assert ok["peak RSS of default `minicnn train` <= 1 GB"] is True
    # the emulated torch column is named, not counted
    assert "StochasticPool2D" in _by_target(ts)["every pooling fwd+bwd >= 3x faster than PyTorch NCHW"]["detail"]


def test_targets_fail_from_the_measured_ratios():
    ts = _by_target(report.targets(_results(pool_ratio_nchw=2.9, pool_ratio_cl=0.9, lenet_epoch=(3.0, 2.4),
                                            steps=(0.01, 0.05), warm=2.5, rss=2 << 30)))
    nchw = ts["every pooling fwd+bwd >= 3x faster than PyTorch NCHW"]
    assert nchw["pass"] is False and "1/2 cases pass" in nchw["measured"] and "MaxPool2D" in nchw["detail"]
    assert ts["every pooling fwd+bwd no slower than PyTorch channels_last"]["pass"] is False
    assert ts["one LeNet epoch <= 1.0x PyTorch's time (batch 64)"]["pass"] is False
    assert ts["training (lenet epoch) >= 8x faster than the naive numpy reference"]["pass"] is False  # 20/3
    assert ts["warm start (import + first training batch, cached kernels) <= 2 s"]["pass"] is False
    assert ts["peak RSS of default `minicnn train` <= 1 GB"]["pass"] is False


@pytest.mark.parametrize("r, need, at_most, shown", [
    (2.996, 3.0, False, "2.996×"),        # would read "3.00×", a pass, under plain rounding
    (3.004, 3.0, False, "3.00×"),
    (2.9999996, 3.0, False, "2.9999996×"),
    (12.9, 8.0, False, "12.9×"),
    (7.9996, 8.0, False, "7.9996×"),
    (1.003, 1.0, True, "1.003×"),         # "1.00×" would read as <= 1
    (0.9996, 1.0, True, "1.00×"),
    (None, 3.0, False, "—"),
])
def test_a_ratio_is_never_shown_on_the_wrong_side_of_its_threshold(r, need, at_most, shown):
    assert report._fmt_vs(r, need, at_most) == shown


def test_a_failing_case_at_the_threshold_reads_as_failing():
    ts = _by_target(report.targets(_results(pool_ratio_nchw=2.996)))
    nchw = ts["every pooling fwd+bwd >= 3x faster than PyTorch NCHW"]
    assert nchw["pass"] is False and "2.996×" in nchw["detail"] and "2.996×" in nchw["measured"]


def test_targets_not_measured_without_data():
    ts = report.targets({"records": []})
    assert all(t["pass"] is None for t in ts)
    assert len(ts) == 7


def test_failed_child_fails_its_target():
    res = _results()
    res["compile"]["default"]["warm"]["returncode"] = 1
    res["memory"]["default"]["returncode"] = 1
    ts = _by_target(report.targets(res))
    assert ts["warm start (import + first training batch, cached kernels) <= 2 s"]["pass"] is False
    assert ts["peak RSS of default `minicnn train` <= 1 GB"]["pass"] is False


def test_warm_summary_takes_the_median_run_and_keeps_every_wall():
    from benchmarks.compile import warm_summary

    runs = [{"wall": w, "returncode": 0, "child": {"tag": w}} for w in (2.4, 1.5, 1.7, 3.0, 1.6)]
    s = warm_summary(runs)
    assert s["wall"] == 1.7 and s["child"] == {"tag": 1.7} and s["returncode"] == 0
    assert s["walls"] == [2.4, 1.5, 1.7, 3.0, 1.6]                    # in run order
    assert warm_summary(runs[:4])["wall"] == 1.7                      # even count: the lower middle
    assert warm_summary(runs[:1])["wall"] == 2.4
    with pytest.raises(ValueError, match="at least one run"):
        warm_summary([])


def test_warm_summary_cannot_hide_a_failed_run():
    from benchmarks.compile import warm_summary

    runs = [{"wall": 1.0, "returncode": 0, "child": {}},
            {"wall": 0.2, "returncode": 1, "child": None, "stderr": "boom"},
            {"wall": 1.1, "returncode": 0, "child": {}}]
    s = warm_summary(runs)
    assert s["returncode"] == 1 and s["stderr"] == "boom" and s["wall"] == 1.0
    res = _results()
    res["compile"]["default"]["warm"] = s
    t = _by_target(report.targets(res))["warm start (import + first training batch, cached kernels) <= 2 s"]
    assert t["pass"] is False and "median of 3 runs: 1.00 s, 0.20 s, 1.10 s" in t["detail"]


def test_warm_start_with_scipy_hidden_is_reported_beside_the_target():
    """The hidden-SciPy warm runs are shown (target detail, compile table) but
    the target is judged on the plain warm runs alone."""
    res = _results(warm=2.3)
    res["compile"]["default"]["warm_without_scipy"] = {"wall": 1.4, "returncode": 0, "walls": [1.4],
                                                       "child": {"scipy_loaded": False, "import_s": 0.4}}
    res["compile"]["default"]["warm"]["child"] = {"scipy_loaded": True}
    res["compile"]["default"]["cold"] = {"wall": 9.0, "returncode": 0, "child": {"scipy_loaded": True}}
    t = _by_target(report.targets(res))["warm start (import + first training batch, cached kernels) <= 2 s"]
    assert t["pass"] is False and t["measured"] == "2.30 s"
    assert "with SciPy hidden (as without it installed): 1.40 s" in t["detail"]
    md = report.markdown(res)
    row = next(line for line in md.splitlines() if "SciPy hidden |" in line)
    assert row.startswith("| default | warm, SciPy hidden | 1.40 s |") and "| no |" in row
    assert any(line.startswith("| default | warm | 2.30 s |") and "| yes |" in line for line in md.splitlines())
    res["compile"]["default"]["warm_without_scipy"]["returncode"] = 1
    t = _by_target(report.targets(res))["warm start (import + first training batch, cached kernels) <= 2 s"]
    assert "1.40 s (FAILED)" in t["detail"]


def test_child_with_scipy_hidden_runs_without_scipy():
    """``python -c _HIDE_SCIPY --child default`` trains its step and never
    imports SciPy; the finder it installs makes ``import scipy`` fail."""
    from benchmarks import compile as C

    out = harness.run_child([sys.executable, "-c", C._HIDE_SCIPY, "--child", "default"], env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    child = out.json()
    assert child["scipy_loaded"] is False and child["first_step_s"] > 0
    assert C._HIDE_SCIPY.startswith(C._NO_SCIPY_FINDER)            # the child installs this finder first
    probe = C._NO_SCIPY_FINDER + ("try:\n    import scipy.linalg\n"
                                  "except ModuleNotFoundError as e:\n    print('hidden', e.name)\n")
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout.split() == ["hidden", "scipy"], got.stdout + got.stderr


def test_fmt_time_units():
    assert report.fmt_time(None) == "—"
    assert report.fmt_time(2.5) == "2.50 s"
    assert report.fmt_time(0.0123) == "12.3 ms"
    assert report.fmt_time(0.25) == "250 ms"
    assert report.fmt_time(35e-6) == "35 µs"


# ---------------------------------------------------------------- writers
def _full_results():
    res = _results()
    res["records"].append(_rec("conv", "lenet.conv1", "fwd", minicnn=0.001, numpy=0.01, torch=0.002, copy=0.0001))
    res["environment"] = {"host": "my host/1", "date": "2030-01-02 03:04:05", "numba_threads": 2,
                          "numba_threading_layer": "omp", "blas": {"name": "openblas"}}
    res["meta"] = {"mode": "quick", "loadavg_start": [0.1, 0.2, 0.3], "loadavg_end": [0.4, 0.5, 0.6]}
    res["compile"]["default"]["cold"] = {"wall": 9.0, "returncode": 0, "child": {"import_s": 0.5}}
    res["threads"] = {"runs": [{"model": "lenet", "scenario": "quiet", "config": "default", "median": 0.01,
                                "min": 0.009, "baseline": 0.01, "steps": 5, "loadavg": [1, 1, 1]}],
                      "recommendation": "use X"}
    res["experiments"] = [{"name": "e", "shape": "s", "current": {"median": 2.0, "min": 1.0},
                           "candidate": {"median": 1.0, "min": 1.0}, "same": True}]
    res["kernel_options"] = [{"module": "pooling", "name": "k", "cache": True, "parallel": True, "fastmath": False}]
    res["targets"] = report.targets(res)
    return res


def test_markdown_has_sections_and_columns():
    md = report.markdown(_full_results())
    for heading in ("## Environment", "## Targets", "## Pooling", "## Convolution", "## Training",
                    "## Numba compile time and warm start", "## Peak memory", "## Thread oversubscription study",
                    "## Experiments", "## Numba practice: kernel options"):
        assert heading in md
    for column in ("minicnn median (min)", "copy roof", "numpy", "torch NCHW", "torch CL", "mc/torch", "torch/mc",
                   "torchCL/mc", "mc/copy", "numpy/mc"):
        assert f"| {column} |" in md or f" {column} |" in md
    assert "**PASS**" in md and "not measured" in md
    assert "use X" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [l for l in block.splitlines() if l.startswith("|")]
        if rows:
            n = rows[0].count(" | ")
            assert all(r.replace("\\|", "").count(" | ") == n for r in rows[2:]), block


def test_markdown_title_names_the_sections_of_a_partial_run():
    res = _full_results()
    assert report.markdown(res).startswith("# minicnn benchmarks: quick run, 2030-01-02")
    res["meta"]["sections"] = ["training", "memory"]
    assert report.markdown(res).startswith("# minicnn benchmarks: quick run of training, memory only, 2030-01-02")


def test_write_produces_markdown_and_json_atomically(tmp_path):
    res = _full_results()
    md_path, json_path = report.write(res, str(tmp_path), suffix="-quick")
    assert os.path.basename(md_path) == "2030-01-02-my_host_1-quick.md" or md_path.endswith("-my_host_1-quick.md")
    assert json_path == md_path[:-3] + ".json"
    data = json.loads(open(json_path).read())
    assert {"records", "targets", "environment", "meta", "compile", "memory", "threads"} <= set(data)
    rec = data["records"][0]
    assert {"section", "name", "config", "shape", "phase", "times", "ratios", "notes"} <= set(rec)
    assert {"median", "min", "samples", "inner"} <= set(rec["times"]["minicnn"])
    assert {"target", "measured", "pass", "detail"} <= set(data["targets"][0])
    assert open(md_path).read().startswith("# minicnn benchmarks")
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(md_path), os.path.basename(json_path)])


def test_markdown_can_be_rendered_again_from_the_json(tmp_path):
    md_path, json_path = report.write(_full_results(), str(tmp_path))
    first = open(md_path).read()
    os.unlink(md_path)
    assert report.main([json_path]) == 0
    assert open(md_path).read() == first


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    harness.atomic_write(str(p), "one")
    harness.atomic_write(str(p), "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["f.txt"]


def test_output_paths_use_date_and_host(tmp_path):
    md, js = report.output_paths(str(tmp_path), "a b", date="2031-05-06")
    assert md == os.path.join(str(tmp_path), "2031-05-06-a_b.md") and js.endswith("2031-05-06-a_b.json")
    md, js = report.output_paths(str(tmp_path), "a b", date="2031-05-06", suffix="-quick", n=3)
    assert md == os.path.join(str(tmp_path), "2031-05-06-a_b-quick-3.md") and js == md[:-3] + ".json"


def test_write_never_replaces_a_report_and_history_reads_the_new_names(tmp_path):
    """A second run the same day replaced the first report (committed ones
    too): it gets the next free name, -2, -3, ...; the first keeps its name.
    A name is taken when either of its two files exists."""
    from benchmarks import history
    first = report.write(_full_results(), str(tmp_path), suffix="-quick", date="2031-05-06")
    before = [open(p).read() for p in first]
    (tmp_path / "2031-05-06-my_host_1-quick-3.md").write_text("a stray file, kept")
    written = [first] + [report.write(_full_results(), str(tmp_path), suffix="-quick", date="2031-05-06")
                         for _ in range(2)]
    names = [os.path.basename(md)[:-3] for md, _ in written]
    assert names == ["2031-05-06-my_host_1-quick", "2031-05-06-my_host_1-quick-2", "2031-05-06-my_host_1-quick-4"]
    assert [open(p).read() for p in first] == before
    assert (tmp_path / "2031-05-06-my_host_1-quick-3.md").read_text() == "a stray file, kept"
    assert not (tmp_path / "2031-05-06-my_host_1-quick-3.json").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]          # no temporary file left
    for md, js in written:
        assert json.loads(open(js).read())["targets"] and open(md).read().startswith("# minicnn benchmarks")
    table = history.table(str(tmp_path), links="r/")
    for name in names:
        assert f"| [{name}](r/{name}.md) |" in table


def test_write_without_hard_links_still_never_replaces(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    a = report.write(_full_results(), str(tmp_path), date="2031-05-06")
    b = report.write(_full_results(), str(tmp_path), date="2031-05-06")
    assert os.path.basename(a[1]) == "2031-05-06-my_host_1.json"
    assert os.path.basename(b[1]) == "2031-05-06-my_host_1-2.json"
    assert json.loads(open(a[1]).read()) == json.loads(open(b[1]).read())
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in a + b)


# ----------------------------------------------------------- subprocesses
def test_run_child_reports_exit_peak_rss_and_json():
    code = "import json; b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096]); print(json.dumps({'ok': 1}))"
    r = harness.run_child([sys.executable, "-c", code], env=_env(), rss=True)
    assert r.returncode == 0 and r.json() == {"ok": 1}
    assert r.max_rss >= 80 * 2**20
    for rss in (False, True):
        r = harness.run_child([sys.executable, "-c", "import sys; print('x'); sys.exit(3)"], env=_env(), rss=rss)
        assert r.returncode == 3 and r.json() is None and r.stdout.strip() == "x"


def test_child_peak_rss_does_not_include_the_parents():
    """Linux keeps the pre-exec address space's high-water RSS in a child's
    ru_maxrss; the launcher keeps a big parent's memory out of the figure."""
    big = np.ones(300 * 2**20 // 8)           # this process: > 300 MB resident
    r = harness.run_child([sys.executable, "-c", "pass"], env=_env(), rss=True)
    assert r.returncode == 0
    assert 0 < r.max_rss < 150 * 2**20, r.max_rss
    del big


def test_clean_env_drops_thread_variables(monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "7")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    env = harness.clean_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert "NUMBA_NUM_THREADS" not in env and "OPENBLAS_NUM_THREADS" not in env
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert ROOT in env["PYTHONPATH"].split(os.pathsep)


def test_thread_recommendation_is_computed_from_the_runs():
    from benchmarks.threads import recommend

    runs = []
    for scen, times in (("quiet", {"default": 1.0, "A": 1.02, "B": 0.98, "C": 2.0}),
                        ("contended", {"default": 10.0, "A": 1.2, "B": 9.0, "C": 0.5})):
        for model in ("lenet", "default"):
            for cfg, t in times.items():
                runs.append({"scenario": scen, "model": model, "config": cfg, "median": t,
                             "baseline": times["default"]})
    best, text = recommend(runs)
    assert best == "A" and "`A`" in text       # C is best contended but 2x slower on a quiet machine
    quiet_only = [r for r in runs if r["scenario"] == "quiet"]
    assert recommend(quiet_only)[0] == "B"
    assert recommend([]) == (None, "no complete measurements")


def test_synthetic_idx_files_load_with_minicnn(tmp_path):
    from benchmarks.memory import synthetic_mnist
    from minicnn.data import load_mnist

    synthetic_mnist(str(tmp_path), 20, 10)
    x, y = load_mnist(str(tmp_path), "train")
    assert x.shape == (20, 1, 28, 28) and y.shape == (20,) and y.max() <= 9


# ------------------------------------------------- references == minicnn
RNG = np.random.default_rng(1234)


def _x(shape, positive=False):
    x = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(x) if positive else x


@pytest.mark.parametrize("k,s,p,shape", [(2, 2, 0, (2, 3, 8, 8)), (3, 2, 1, (2, 3, 9, 7)),
                                         (3, 1, 1, (1, 2, 5, 6)), (2, 2, 0, (2, 2, 7, 9))])
def test_maxpool_reference_matches_minicnn(k, s, p, shape):
    x = _x(shape)
    layer = mc.MaxPool2D(k, s, p, return_indices=True)
    y, idx = layer.forward(x)
    ry, ridx = R.maxpool_forward(x, k, s, p)
    np.testing.assert_array_equal(ry, y)
    np.testing.assert_array_equal(ridx, idx)
    g = _x(y.shape)
    np.testing.assert_allclose(R.maxpool_backward(g, ridx, x.shape), layer.backward(g), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_avgpool_reference_matches_minicnn(k, s, p):
    x = _x((2, 3, 9, 8))
    layer = mc.AvgPool2D(k, s, p)
    y = layer.forward(x)
    np.testing.assert_allclose(R.avgpool_forward(x, k, s, p), y, rtol=1e-5, atol=1e-6)
    g = _x(y.shape)
    np.testing.assert_allclose(R.avgpool_backward(g, x.shape, k, s, p), layer.backward(g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_lppool_and_mixed_references_match_minicnn(k, s):
    x = _x((2, 3, 8, 8))
    lp = mc.LPPool2D(2, k, s)
    y = lp.forward(x)
    ry, sums = R.lppool_forward(x, 2.0, k, s)
    np.testing.assert_allclose(ry, y, rtol=1e-5)
    g = _x(y.shape)
    np.testing.assert_allclose(R.lppool_backward(g, x, ry, sums, 2.0, k, s), lp.backward(g), rtol=1e-4, atol=1e-5)

    mix = mc.MixedPool2D(k, s, alpha=0.3)
    y = mix.forward(x)
    ry, idx = R.mixedpool_forward(x, k, s, 0.3)
    np.testing.assert_allclose(ry, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(R.mixedpool_backward(g, idx, x.shape, k, s, 0.3), mix.backward(g),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_stochastic_reference_matches_minicnn(k, s):
    x = _x((2, 3, 8, 8), positive=True)
    x[0, 0, :3, :3] = 0.0                           # an all-zero window: output 0, no gradient
    layer = mc.StochasticPool2D(k, s, seed=5)
    y = layer.forward(x)
    u = np.random.default_rng(5).random(y.shape)    # the layer's first draw
    ry, idx = R.stochastic_forward(x, u, k, s)
    np.testing.assert_array_equal(ry, y)
    g = _x(y.shape)
    np.testing.assert_allclose(R.maxpool_backward(g, idx, x.shape), layer.backward(g), rtol=1e-6)


@pytest.mark.parametrize("k,out", [(2, (4, 4)), (3, (4, 3))])
def test_fractional_reference_matches_minicnn(k, out):
    x = _x((2, 3, 8, 9))
    layer = mc.FractionalMaxPool2D(k, output_size=out, seed=3)
    y = layer.forward(x)
    ry, idx = R.fractional_forward(x, layer.samples, k, out)
    np.testing.assert_array_equal(ry, y)
    g = _x(y.shape)
    np.testing.assert_allclose(R.maxpool_backward(g, idx, x.shape), layer.backward(g), rtol=1e-6)


@pytest.mark.parametrize("o", [1, 3, 4])
def test_adaptive_references_match_minicnn(o):
    x = _x((2, 3, 10, 7))
    avg = mc.AdaptiveAvgPool2D(o)
    y = avg.forward(x)
    np.testing.assert_allclose(R.adaptive_avg_forward(x, o, o), y, rtol=1e-5, atol=1e-6)
    g = _x(y.shape)
    np.testing.assert_allclose(R.adaptive_avg_backward(g, x.shape), avg.backward(g), rtol=1e-5, atol=1e-6)
    mx = mc.AdaptiveMaxPool2D(o, return_indices=True)
    y, idx = mx.forward(x)
    ry, ridx = R.adaptive_max_forward(x, o, o)
    np.testing.assert_array_equal(ry, y)
    np.testing.assert_array_equal(ridx, idx)
    np.testing.assert_allclose(R.adaptive_max_backward(g, ridx, x.shape), mx.backward(g), rtol=1e-6)


def test_global_and_spp_references_match_minicnn():
    x = _x((2, 3, 9, 8))
    ga = mc.GlobalAvgPool2D()
    y = ga.forward(x)
    np.testing.assert_allclose(R.global_avg_forward(x), y, rtol=1e-5, atol=1e-6)
    g = _x(y.shape)
    np.testing.assert_allclose(R.global_avg_backward(g, x.shape), ga.backward(g), rtol=1e-5, atol=1e-7)
    gm = mc.GlobalMaxPool2D()
    y = gm.forward(x)
    ry, idx = R.global_max_forward(x)
    np.testing.assert_array_equal(ry, y)
    np.testing.assert_allclose(R.global_max_backward(g, idx, x.shape), gm.backward(g))
    spp = mc.SpatialPyramidPool2D((1, 2, 4), "max")
    y = spp.forward(x)
    ry, idxs = R.spp_forward(x, (1, 2, 4))
    np.testing.assert_array_equal(ry, y)
    g = _x(y.shape)
    np.testing.assert_allclose(R.spp_backward(g, idxs, x.shape, (1, 2, 4)), spp.backward(g), rtol=1e-6)


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1)])
def test_maxunpool_reference_matches_minicnn(k, s, p):
    x = _x((2, 3, 8, 8))
    pooled, idx = mc.MaxPool2D(k, s, p, return_indices=True).forward(x)
    layer = mc.MaxUnpool2D(k, s, p)
    y = layer.forward(pooled, idx, (8, 8))
    np.testing.assert_array_equal(R.maxunpool_forward(pooled, idx, (8, 8)), y)
    g = _x(y.shape)
    np.testing.assert_array_equal(R.maxunpool_backward(g, idx), layer.backward(g))


@pytest.mark.parametrize("C,F,H,pad", [(1, 4, 8, 1), (3, 5, 7, 1), (2, 3, 6, 0)])
def test_im2col_conv_reference_matches_conv2d(C, F, H, pad):
    mc.manual_seed(0)
    layer = mc.Conv2D(C, F, 3, padding=pad)
    x = _x((2, C, H, H))
    y = layer.forward(x)
    ry, cache = R.conv_forward(x, layer.params["W"], layer.params["b"], 1, pad)
    np.testing.assert_allclose(ry, y, rtol=1e-5, atol=1e-5)
    g = _x(y.shape)
    dx = layer.backward(g)
    rdx, rdW, rdb = R.conv_backward(g, cache)
    np.testing.assert_allclose(rdx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rdW, layer.grads["W"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rdb, layer.grads["b"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_numpy_net_step_matches_minicnn_training_step(opt):
    from minicnn.models import build_model
    from minicnn.train import Trainer

    model = build_model("lenet", seed=0)
    net = R.NumpyNet.from_minicnn(model, optimizer=opt, lr=0.01 if opt == "sgd" else 1e-3,
                                  momentum=0.9, nesterov=True)
    params = model.parameters()
    optim = mc.SGD(params, lr=0.01, momentum=0.9, nesterov=True) if opt == "sgd" else mc.Adam(params, lr=1e-3)
    tr = Trainer(model, optim, batch_size=8, progress=False)
    x, y = _x((8, 1, 28, 28)), RNG.integers(0, 10, 8)
    for step in range(2):
        loss, _ = tr.train_step(x, y, f"step {step}")
        assert net.step(x, y) == pytest.approx(loss, rel=1e-5)
    mine = [spec[k] for _, spec, k in net.params()]
    theirs = [p for _, p, _ in model.parameters()]
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_torch_net_matches_minicnn_forward():
    """The PyTorch column trains the same network: same layers, same weights."""
    torch = pytest.importorskip("torch")
    from benchmarks.training import torch_net
    from minicnn.models import build_model

    for name in ("lenet", "default"):
        model = build_model(name, seed=0)
        x = _x((4, 1, 28, 28))
        net, _ = torch_net(torch, model, name)
        with torch.no_grad():
            out = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, model.forward(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------ Numba practice
def _dispatchers():
    import minicnn.kernels as kernels
    from numba.core.dispatcher import Dispatcher

    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"minicnn.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == mod.__name__:
                yield mod, name, obj


def test_every_kernel_is_cached_and_every_public_kernel_parallel():
    """cache=True everywhere (a real on-disk cache, not numba's NullCache;
    ``cache`` is not kept in ``targetoptions``).  parallel=True on every
    kernel the layers call; the private ``_helpers`` jitted with plain
    ``@njit(cache=True)`` are inlined into the parallel kernels' loop bodies
    and have no loop of their own to parallelise."""
    found = list(_dispatchers())
    assert len(found) >= 10
    for mod, name, d in found:
        where = f"{mod.__name__}.{name}"
        assert type(d._cache).__name__ != "NullCache", f"{where}: compiled without cache=True"
        if not name.startswith("_"):
            assert d.targetoptions.get("parallel") is True, f"{where}: compiled without parallel=True"
            plain = getattr(mod, "_" + name, None)
            assert plain is d.py_func, f"{where}: compile the plain function _{name} by name (GUIDE practice 1)"
    assert harness.kernel_options() and all(k["cache"] for k in harness.kernel_options())


PARALLEL_NUMPY_CALLS = {"zeros", "ones", "arange", "linspace"}   # numba.parfors.parfor


def _numpy_call(node):
    """``"zeros"`` for ``np.zeros(...)``, ``"random.rand"`` for
    ``np.random.rand(...)``; None for any other node."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    f = node.func
    if isinstance(f.value, ast.Name) and f.value.id == "np":
        return f.attr
    if (isinstance(f.value, ast.Attribute) and f.value.attr == "random"
            and isinstance(f.value.value, ast.Name) and f.value.value.id == "np"):
        return "random." + f.attr
    return None


def test_parallel_kernels_run_no_hidden_parallel_regions():
    """Under parallel=True Numba turns ``np.zeros``, ``np.ones``,
    ``np.arange``, ``np.linspace`` and ``np.random`` calls into parallel
    loops of their own, each a separate launch of the thread pool (about
    18 µs here; four of them were 58-100 µs of the AvgPool2D 3x3/2
    forward, kernels/__init__).  The
    kernels allocate with ``np.empty`` and fill inside their prange loop.
    Checked in the source of every parallel kernel and of the
    ``inline='always'`` helpers compiled into them."""
    checked = 0
    for mod, name, d in _dispatchers():
        if not (d.targetoptions.get("parallel") or d.targetoptions.get("inline") == "always"):
            continue
        for node in ast.walk(ast.parse(inspect.getsource(d.py_func).lstrip())):
            call = _numpy_call(node)
            assert call not in PARALLEL_NUMPY_CALLS and not (call or "").startswith("random."), (
                f"{mod.__name__}.{name}: np.{call} at line "
                f"{d.py_func.__code__.co_firstlineno + node.lineno - 1} runs as a parallel region "
                f"of its own; allocate with np.empty and fill inside the prange")
        checked += 1
    assert checked >= 30


def test_numba_num_threads_is_respected():
    code = ("import minicnn, numba, numpy as np\n"
            "from minicnn.kernels import pooling as K\n"
            "K.maxpool2d_backward(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.int64),"
            " np.zeros((2, 4, 4), np.float32))\n"
            "print(numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(NUMBA_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


# --------------------------------------------------------------- the CLI
def test_help_works():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--only", "--repeats", "--out", "--tiny"):
        assert flag in out.stdout


def test_minicnn_bench_passes_every_argument_to_the_suite(tmp_path):
    """`minicnn bench ARGS` is `python -m benchmarks ARGS` of this checkout,
    leading options included, from any working directory."""
    out = subprocess.run([sys.executable, "-m", "minicnn", "bench", "--help"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m benchmarks" in out.stdout and "--quick" in out.stdout
    out = subprocess.run([sys.executable, "-m", "minicnn", "bench", "--tiny", "--no-torch", "--only", "pooling",
                          "--repeats", "1", "--out", str(tmp_path / "r")],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(os.listdir(tmp_path / "r"))
    assert len(files) == 2 and files[0].endswith("-tiny.json") and files[1].endswith("-tiny.md")
    out = subprocess.run([sys.executable, "-m", "minicnn", "bench", "--only", "nope"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown section" in out.stderr


def test_minicnn_bench_without_a_checkout_says_where_the_suite_is(monkeypatch, capsys):
    from minicnn import cli
    monkeypatch.setattr(cli, "_benchmarks_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minicnn bench: ") and "benchmarks/" in err and "python -m benchmarks" in err


@pytest.mark.parametrize("argv, message", [
    (["--min-sample", "-1"], "argument --min-sample: expected a number of seconds >= 0, got '-1'"),
    (["--min-sample", "nan"], "argument --min-sample: expected a number of seconds >= 0, got 'nan'"),
    (["--min-sample", "inf"], "argument --min-sample: expected a number of seconds >= 0, got 'inf'"),
    (["--min-sample", "soon"], "argument --min-sample: expected a number of seconds >= 0, got 'soon'"),
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
    (["--repeats", "nan"], "argument --repeats: expected a positive integer, got 'nan'"),
    (["--repeats", "2.5"], "argument --repeats: expected a positive integer, got '2.5'"),
    (["--only", ","], "argument --only: empty list of sections ','"),
    (["--only", ""], "argument --only: empty list of sections ''"),
    (["--only", "pooling,nope"], "argument --only: unknown section(s) ['nope']"),
])
def test_bad_numbers_and_section_lists_are_usage_errors(argv, message, capsys):
    """--min-sample -1 and nan started the full run; --only , said "unknown
    section(s) ','"."""
    from benchmarks.__main__ import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m benchmarks: error: {message}" in err and "Traceback" not in err


def test_min_sample_zero_means_one_call_per_sample():
    from benchmarks.__main__ import build_parser
    assert build_parser().parse_args(["--min-sample", "0"]).min_sample == 0.0
    assert harness.calls_per_sample(1e-6, 0.0) == 1


def test_out_is_checked_before_any_work(tmp_path, monkeypatch, capsys):
    """--out naming a file ran every section, then lost the results to a
    FileExistsError traceback: it is refused up front (exit 2, naming --out);
    a missing folder is created."""
    from benchmarks import __main__ as bench

    def no_work(*args, **kwargs):
        raise AssertionError("a benchmark started despite a bad --out")
    monkeypatch.setattr(harness, "loadavg", no_work)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out, message in ((afile, f"argument --out: {afile} is a file; --out must be a folder (created if missing)"),
                         (afile / "sub", f"argument --out: cannot create the folder {afile / 'sub'}: "),
                         ("", "argument --out: expected a folder, got ''")):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--tiny", "--only", "conv", "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"python -m benchmarks: error: {message}" in err and "Traceback" not in err
    assert afile.read_text() == "keep"
    assert bench._out_problem(str(tmp_path / "new" / "folder")) is None
    assert (tmp_path / "new" / "folder").is_dir()


def test_a_second_run_the_same_day_keeps_the_first_report(tmp_path):
    """Two runs into one folder: the second's report is ``...-tiny-2`` and says so."""
    cmd = [sys.executable, "-m", "benchmarks", "--tiny", "--no-torch", "--only", "conv", "--out", str(tmp_path)]
    runs = [subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 4 and [f for f in files if f.endswith("-tiny-2.md") or f.endswith("-tiny-2.json")]
    first = next(f for f in files if f.endswith("-tiny.md"))
    assert f"{tmp_path / first} exists: not replaced" in runs[1].stderr
    assert f"wrote {tmp_path / first[:-3]}-2.md" in runs[1].stderr


def test_bad_section_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown section" in out.stderr


def test_smoke_run_tiny_pooling_and_conv(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--only", "pooling,conv,experiments",
                          "--repeats", "1", "--out", str(tmp_path)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].endswith("-tiny.json") and files[1].endswith("-tiny.md")
    data = json.loads((tmp_path / files[0]).read_text())
    layers = {r["name"] for r in data["records"] if r["section"] == "pooling"}
    assert layers == {"MaxPool2D", "AvgPool2D", "LPPool2D", "MixedPool2D", "StochasticPool2D",
                      "FractionalMaxPool2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D", "GlobalAvgPool2D",
                      "GlobalMaxPool2D", "SpatialPyramidPool2D", "MaxUnpool2D"}
    assert {r["phase"] for r in data["records"]} == {"fwd", "bwd", "fwd+bwd"}
    assert all(r["times"]["minicnn"] and r["times"]["copy"] and r["times"]["numpy"] for r in data["records"])
    assert all(e["same"] for e in data["experiments"])
    assert "errors" not in data
    md = (tmp_path / files[1]).read_text()
    assert "## Pooling" in md and "## Convolution" in md and "## Targets" in md


def test_smoke_run_tiny_training_and_subprocess_sections(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--no-torch",
                          "--only", "training,compile,memory,threads", "--out", str(tmp_path)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(next(p for p in tmp_path.iterdir() if p.suffix == ".json").read_text())
    assert {(r["name"], r["phase"]) for r in data["records"]} == {
        ("lenet", "step"), ("lenet", "epoch"), ("default", "step"), ("default", "epoch"),
        ("default, sparse backward off", "epoch")}
    for r in data["records"]:
        if r["phase"] == "epoch":          # how many conv backward passes went sparse, counted
            assert re.search(r"\d+ of [1-9]\d* im2col-path conv backward passes" if "off" not in r["name"]
                             else r"; 0 sparse passes", r["notes"]), r["notes"]
    assert data["memory"]["default"]["returncode"] == 0 and data["memory"]["default"]["max_rss"] > 0
    assert all(r.get("median") for r in data["threads"]["runs"]), data["threads"]
    assert "synthetic" in data["meta"]["data"]
    for kind in ("cold", "warm"):
        run = data["compile"]["default"][kind]
        assert run["returncode"] == 0 and run["child"]["first_step_s"] > 0
    warm = data["compile"]["default"]["warm"]
    assert warm["child"]["numba_cache_files"] > 0
    assert len(warm["walls"]) == 3 and warm["wall"] == sorted(warm["walls"])[1]   # --tiny: 3 warm runs
    from benchmarks.compile import scipy_installed
    hidden = data["compile"]["default"].get("warm_without_scipy")
    if scipy_installed():              # then the warm runs are repeated with SciPy hidden
        assert hidden["returncode"] == 0 and hidden["child"]["scipy_loaded"] is False, hidden
        assert len(hidden["walls"]) == 3
    else:
        assert hidden is None


def test_one_openmp_runtime_when_numba_starts_before_torch():
    """The harness starts Numba's pool before importing torch, so the process
    has one OpenMP runtime (torch ships its own libgomp.so.1)."""
    pytest.importorskip("torch")
    code = ("from benchmarks import harness\n"
            "harness.start_numba_pool()\n"
            "import torch\n"
            "print(len(harness.openmp_runtimes()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


@pytest.mark.parametrize("user, expect", [
    ({}, ["4", "PASSIVE", "10000"]),
    ({"OPENBLAS_THREAD_TIMEOUT": "10"}, ["10", "PASSIVE", "10000"]),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ["4", "ACTIVE", "unset"]),     # a spin count would override it
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ["4", "PASSIVE", "unset"]),
    ({"GOMP_SPINCOUNT": "5"}, ["4", "PASSIVE", "5"]),
])
def test_minicnn_sets_thread_variables_unless_the_user_did(user, expect):
    """minicnn/threads.py: OPENBLAS_THREAD_TIMEOUT=4, OMP_WAIT_POLICY=PASSIVE
    and GOMP_SPINCOUNT=10000 by default; a value the user set is kept, and
    GOMP_SPINCOUNT is set only when the user set neither OpenMP variable."""
    env = {k: v for k, v in _env().items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    code = ("import minicnn, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], os.environ['OMP_WAIT_POLICY'], "
            "os.environ.get('GOMP_SPINCOUNT', 'unset'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expect


def test_sparse_backward_count_counts_the_im2col_path_only():
    """The training section's count: every im2col-path conv backward pass,
    and those that took the sparse path; the direct path is not counted."""
    from benchmarks.training import sparse_backward_count
    import minicnn as m
    rng = np.random.default_rng(0)
    gemm, direct = m.Conv2D(6, 2, 3, padding=1), m.Conv2D(1, 2, 3, padding=1)
    x6, x1 = rng.standard_normal((2, 6, 5, 5)).astype(np.float32), rng.standard_normal((2, 1, 5, 5)).astype(np.float32)
    with sparse_backward_count() as counts:
        for layer, x in ((gemm, x6), (direct, x1)):
            y = layer.forward(x)
            layer.backward(rng.standard_normal(y.shape).astype(np.float32))     # dense: the GEMMs
            layer.backward(np.zeros(y.shape, np.float32))                       # all zero: sparse (im2col path)
    assert counts == {"total": 2, "sparse": 1}
    assert m.Conv2D._backward.__name__ == "_backward"                          # restored


def test_interleaved_epochs_alternate_slices_and_keep_each_ones_own_time():
    """The training section's epochs in slices: after every ``every`` steps of
    the main epoch, one slice of each other (order rotating); slices left
    at the end run then; each contestant's time is its own (a fake clock:
    a main step costs 1 s, a numpy slice 10 s, a torch slice 100 s)."""
    from benchmarks.training import interleaved_epochs
    now = [0.0]
    log = []

    def clock():
        return now[0]

    def main(after_step):
        for i in range(7):
            now[0] += 1.0
            log.append(f"m{i}")
            after_step()

    def slice_(name, i, cost):
        def go():
            now[0] += cost
            log.append(f"{name}{i}")
        return go

    others = {"n": [slice_("n", i, 10.0) for i in range(4)],
              "t": [slice_("t", i, 100.0) for i in range(4)]}
    got = interleaved_epochs(main, others, every=2, clock=clock)
    assert log == ["m0", "m1", "n0", "t0", "m2", "m3", "t1", "n1", "m4", "m5", "n2", "t2", "m6",
                   "t3", "n3"]
    assert got == {"main": 7.0, "n": 40.0, "t": 400.0}


def test_epoch_slices_cover_the_batches_once_in_order():
    from benchmarks.training import _slices
    seen = []
    pairs = [(i, -i) for i in range(10)]
    parts = _slices(lambda xb, yb: seen.append((xb, yb)), iter(pairs), 10, 4)
    assert len(parts) == 4
    for k, p in enumerate(parts):
        p()
        assert len(seen) == 10 * (k + 1) // 4                        # each draws only its own run
    assert seen == pairs
    assert len(_slices(lambda *a: None, iter(pairs[:2]), 2, 16)) == 2    # never an empty slice


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_names_the_checkout_and_marks_changes(tmp_path):
    """The report's commit: the short hash of HEAD, ``+changes`` once a
    tracked file differs from it, None outside a git checkout."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    assert harness.git_commit(str(tmp_path)) is None
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert harness.git_commit(str(tmp_path)) == head
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert harness.git_commit(str(tmp_path)) == head
    (tmp_path / "a.txt").write_text("two")
    assert harness.git_commit(str(tmp_path)) == head + "+changes"


def test_markdown_names_the_commit_or_says_it_was_not_recorded():
    res = _full_results()
    res["environment"]["commit"] = "abc1234"
    assert "| minicnn commit | abc1234 |" in report.markdown(res)
    del res["environment"]["commit"]                     # reports written before it was recorded
    assert "| minicnn commit | not recorded |" in report.markdown(res)


def test_history_tabulates_each_reports_own_targets_oldest_first(tmp_path):
    """``python -m benchmarks.history``: one row per JSON report, the figures
    shortened from the report's own ``targets``, ``(fail)`` on a failed
    target, ``—`` where a target was not measured or not in the report."""
    from benchmarks import history
    good = _full_results()
    good["environment"]["date"], good["environment"]["commit"] = "2030-01-02 03:04:05", "abc1234"
    bad = _full_results()
    bad["records"] = _results(pool_ratio_nchw=2.9, lenet_epoch=(3.0, 2.4)).get("records")
    bad["targets"] = report.targets(bad)
    bad["environment"]["date"] = "2030-01-01 00:00:00"            # older: listed first
    bad["meta"]["sections"] = ["pooling"]
    for name, res in (("new", good), ("old", bad)):
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    lines = history.table(str(tmp_path), links="r/").splitlines()
    assert lines[0].startswith("| report | date | commit | run | wall | pooling >= 3x NCHW |")
    old, new = lines[2], lines[3]
    assert old.startswith("| [old](r/old.md) | 2030-01-01 00:00:00 | not recorded | quick (pooling) |")
    assert "| 1/2 (fail) |" in old and "| 2/2 |" in new           # 1 of the 2 counted cases
    assert new.startswith("| [new](r/new.md) | 2030-01-02 03:04:05 | abc1234 | quick |")
    assert "| 0.83× |" in new and "| 1.25× (fail) |" in old      # LeNet epoch / PyTorch: 2/2.4, 3/2.4
    assert new.endswith("| — | 1.50 s | 300 MiB |")               # no default epoch in these results
    assert history.short("0.417 GB (427 MiB)") == "427 MiB"
    assert history.short("something else") == "something else"


def test_history_says_when_there_is_no_report(tmp_path, capsys):
    from benchmarks import history
    assert history.main([str(tmp_path)]) == 2
    assert "no *.json report" in capsys.readouterr().err


def test_readme_table_of_runs_is_the_history_tools_output():
    """The README's table of kept reports is ``python -m benchmarks.history
    --links benchmarks/results/`` verbatim: a report added or changed
    without regenerating the table fails here."""
    from benchmarks import RESULTS, history
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert history.table(RESULTS, links="benchmarks/results/") in readme
