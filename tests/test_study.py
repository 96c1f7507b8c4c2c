"""The pooling study: variants, shifts, canvases, the run folder, resume, plots, arithmetic.

Everything runs on the synthetic learnable MNIST of conftest.py with a few
hundred images, so the whole file stays well under a minute.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest

import minicnn.train
from minicnn.cli import main
from minicnn.losses import SoftmaxCrossEntropy
from minicnn.models import build_model
from minicnn.study import (BACKGROUND, DIRECTIONS, StudyConfig, StudyError, VARIANTS, all_shifts,
                           build_variant, param_counts, run_study, shift_images, to_canvas)
from minicnn.data import MNISTNotFoundError, load_mnist
from minicnn.study import report as study_report
from minicnn.study import runner
from minicnn.study.plots import PLOT_FILES
from minicnn.study.report import CSV_COLUMNS
from minicnn.study.variants import head_start, parse_variant_list

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "pooling_study.py")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# name: (total params, dense-head params, feature map entering the head)
EXPECTED = {
    "nopool": (1_611_146, 1_606_346, (32, 28, 28)),
    "max": (105_866, 101_066, (32, 7, 7)),
    "avg": (105_866, 101_066, (32, 7, 7)),
    "overlap": (105_866, 101_066, (32, 7, 7)),
    "lp2": (105_866, 101_066, (32, 7, 7)),
    "mixed": (105_866, 101_066, (32, 7, 7)),
    "stochastic": (105_866, 101_066, (32, 7, 7)),
    "strided": (117_434, 101_066, (32, 7, 7)),
    "gap": (5_130, 330, (32, 7, 7)),
    "spp": (48_522, 43_722, (32, 14, 14)),
}


def tiny_config(**kw):
    base = dict(seeds=1, epochs=1, limit_train=256, limit_test=64, limit_shift=16,
                infer_batch=8, infer_repeats=1, canvas_sizes=(24, 32))
    base.update(kw)
    return StudyConfig(**base)


# ------------------------------------------------------------------ variants
def test_expected_table_covers_every_variant():
    assert set(EXPECTED) == set(VARIANTS) and len(VARIANTS) == 10


@pytest.mark.parametrize("name", list(EXPECTED))
def test_variant_builds_runs_forward_backward_with_documented_counts(name):
    total, head, shape = EXPECTED[name]
    model = build_variant(name, seed=0)
    assert param_counts(model) == (total, head)
    assert model.num_params() == total
    before_head = model.layers[head_start(model) - 1].name
    assert model.output_shapes((1, 28, 28))[before_head] == shape

    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    ce = SoftmaxCrossEntropy()
    logits = model.forward(x)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    ce.forward(logits, np.array([3, 7]))
    dx = model.backward(ce.backward())
    assert dx.shape == x.shape and np.all(np.isfinite(dx))
    assert any(np.any(g != 0) for _, g in model.named_grads())


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_variant("max", 1), build_variant("max", 1), build_variant("max", 2)
    for (_, pa), (_, pb), (_, pc) in zip(a.named_params(), b.named_params(), c.named_params()):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.named_params()[0][1], c.named_params()[0][1])


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'median'"):
        build_variant("median")
    with pytest.raises(StudyError, match="unknown variant"):
        StudyConfig(variants=("max", "median"))


# -------------------------------------------------------------------- shifts
def test_shift_moves_a_bright_pixel_one_row_down_with_background_fill():
    x = np.full((1, 1, 5, 5), BACKGROUND, np.float32)
    x[0, 0, 2, 3] = 2.0
    y = shift_images(x, 1, 0)
    expected = np.full_like(x, BACKGROUND)
    expected[0, 0, 3, 3] = 2.0
    np.testing.assert_array_equal(y, expected)
    # left/up: the pixel goes to (2, 1) for (0, -2); what comes in from the border is background
    x2 = np.ones((1, 1, 4, 4), np.float32)
    z = shift_images(x2, 0, -2)
    assert np.all(z[..., :, :2] == 1) and np.all(z[..., :, 2:] == np.float32(BACKGROUND))
    assert not np.shares_memory(z, x2) and np.all(x2 == 1)   # input untouched


def test_background_is_the_normalised_black_pixel(synthetic_mnist_dir):
    from minicnn.data import load_mnist
    assert BACKGROUND == pytest.approx(-0.1307 / 0.3081, abs=1e-6)
    x, _ = load_mnist(synthetic_mnist_dir, "test", limit=50)   # the noise includes 0 pixels
    assert x.min() == np.float32(BACKGROUND)                    # a 0 pixel loads as exactly this


def test_eight_directions_times_three_distances():
    shifts = all_shifts()
    assert len(shifts) == 24 and len(DIRECTIONS) == 8
    assert {(d, dy, dx) for d, _, dy, dx in shifts} == {
        (d, d * uy, d * ux) for d in (1, 2, 3) for uy in (-1, 0, 1) for ux in (-1, 0, 1) if (uy, ux) != (0, 0)}
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 4] = 1.0
    for d, name, dy, dx in shifts:   # the bright pixel lands exactly d steps away in that direction
        y = shift_images(x, dy, dx, fill=0.0)
        assert y[0, 0, 4 + dy, 4 + dx] == 1.0 and y.sum() == 1.0


# ------------------------------------------------------------------ canvases
def test_canvas_pad_and_rescale_shapes_and_fill():
    x = np.arange(28 * 28, dtype=np.float32).reshape(1, 1, 28, 28)
    big = to_canvas(x, 32, "pad")
    assert big.shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(big[0, 0, 2:30, 2:30], x[0, 0])
    assert np.all(big[0, 0, :2] == np.float32(BACKGROUND))
    small = to_canvas(x, 24, "pad")
    np.testing.assert_array_equal(small[0, 0], x[0, 0, 2:26, 2:26])
    np.testing.assert_allclose(to_canvas(x, 28, "rescale"), x)
    assert to_canvas(x, 40, "rescale").shape == (1, 1, 40, 40)


def test_spp_model_accepts_canvases_24_to_40_and_fixed_model_names_expected_shape():
    spp, fixed = build_variant("spp"), build_variant("max")
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    for size in range(24, 41):
        for mode in ("pad", "rescale"):
            assert spp.forward(to_canvas(x, size, mode)).shape == (3, 10)
    with pytest.raises(ValueError) as e:
        fixed.forward(to_canvas(x, 32))
    msg = str(e.value)
    assert "was built for input shape (1, 28, 28)" in msg and "got (1, 32, 32)" in msg


# --------------------------------------------------------------- parameters
def test_parameter_arithmetic_6553700_and_1638500(capsys):
    nopool, pool = build_model("pool_params_nopool"), build_model("pool_params_pool")
    assert nopool.layers[-1].num_params() == 64 * 32 * 32 * 100 + 100 == 6_553_700
    assert pool.layers[-1].num_params() == 64 * 16 * 16 * 100 + 100 == 1_638_500
    assert main(["summary", "--model", "pool_params_nopool"]) == 0
    assert "6,553,700" in capsys.readouterr().out
    assert main(["summary", "--model", "pool_params_pool"]) == 0
    assert "1,638,500" in capsys.readouterr().out


def test_param_count_example_prints_both_and_the_ratio(capsys):
    import runpy
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "examples", "param_count.py"),
                   run_name="__main__")
    out = capsys.readouterr().out
    assert "6,553,700" in out and "1,638,500" in out and "4.00" in out


# --------------------------------------------------------------- the study
@pytest.fixture(scope="module")
def study_run(synthetic_mnist_dir, tmp_path_factory):
    """One tiny study (2 variants) shared by the tests that read its files."""
    run_dir = str(tmp_path_factory.mktemp("study") / "run")
    results = run_study(tiny_config(variants=("max", "spp")), run_dir=run_dir,
                        data_dir=synthetic_mnist_dir, progress=False, command="pytest")
    return run_dir, results


def test_study_writes_report_json_csv_with_expected_columns(study_run):
    run_dir, results = study_run
    for f in ("report.md", "results.json", "results.csv", "settings.json"):
        assert os.path.isfile(os.path.join(run_dir, f))
    with open(os.path.join(run_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS
    assert [r["variant"] for r in rows] == ["max", "spp"]
    assert rows[0]["params_total"] == "105866" and rows[0]["head_input_shape"] == "32x7x7"

    data = json.load(open(os.path.join(run_dir, "results.json")))
    v = data["variants"][0]
    assert v["params_head"] == 101_066 and v["head_input_shape"] == [32, 7, 7]
    run = v["runs"][0]
    assert run["seed"] == 0 and 0 <= run["test_accuracy"] <= 1 and run["inference_ms_per_batch"] > 0
    assert len(run["seconds_per_epoch"]) == 1
    assert set(run["shift"]["distances"]) == {"1", "2", "3"}
    assert set(run["shift"]["distances"]["2"]["directions"]) == set(DIRECTIONS)
    assert set(v["aggregate"]["shift"]["3"]) == {"accuracy", "unchanged"}
    assert data["spp_canvas"]["pad"].keys() == {"24", "32"} == data["spp_canvas"]["rescale"].keys()
    assert data["fixed_size_error"].startswith("fixed-size model on 32×32: ValueError: ")
    assert "(1, 28, 28)" in data["fixed_size_error"]
    machine = data["meta"]["machine"]
    assert {"platform", "cpu_count", "numba_threads"} <= set(machine)

    report = open(os.path.join(run_dir, "report.md")).read()
    for fragment in ("| variant", "dense-head params", "head input", "test acc %", "train s/epoch",
                     "infer ms/batch", "shift 1px", "shift 3px", "max 2x2", "SPP head", "24×24",
                     "fixed-size model on 32×32: ValueError:", "`pytest`", "numba threads",
                     "after a warm-up: before each run's timed epochs, one forward and",
                     "Test accuracy: 1 seed (no std) on 64 test images; 1 epoch on 256 training images"):
        assert fragment in report
    assert "epoch(s)" not in report and "mean ± std over 1 seed" not in report


def test_study_learns_the_synthetic_task(study_run):
    _, results = study_run
    assert results["variants"][0]["aggregate"]["test_accuracy_mean"] > 0.5   # chance is 0.1


def test_plots_are_valid_pngs_when_matplotlib_is_present(study_run):
    pytest.importorskip("matplotlib")
    run_dir, results = study_run
    files = results["plots"]["files"]
    assert {"accuracy_vs_params.png", "accuracy_vs_shift.png", "feature_maps.png"} <= set(files)
    assert set(files) <= set(PLOT_FILES)                 # the names stale-plot removal knows
    for name in files:
        with open(os.path.join(run_dir, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert f"]({name})" in open(os.path.join(run_dir, "report.md")).read()


def test_resume_skips_completed_runs_and_trains_only_new_ones(study_run, monkeypatch, capsys):
    run_dir, first = study_run
    calls = []
    real_fit = minicnn.train.Trainer.fit

    def counting_fit(self, *a, **k):
        calls.append(self.model_name)
        return real_fit(self, *a, **k)

    monkeypatch.setattr(minicnn.train.Trainer, "fit", counting_fit)
    data_dir = first["meta"]["data_dir"]
    again = run_study(tiny_config(variants=("max", "spp")), run_dir=run_dir, data_dir=data_dir,
                      progress=False, plots=False)
    assert calls == []                                   # everything reused
    assert again["variants"][0]["runs"] == first["variants"][0]["runs"]
    assert "2 of 2 runs already complete" in capsys.readouterr().err
    run_study(tiny_config(variants=("max", "gap")), run_dir=run_dir, data_dir=data_dir,
              progress=False, plots=False)
    assert calls == ["gap"]                              # only the new variant trained


def test_a_run_stopped_mid_way_continues_from_its_epoch_checkpoint(synthetic_mnist_dir, tmp_path,
                                                                    monkeypatch):
    cfg = tiny_config(variants=("max",), epochs=2)
    straight = run_study(cfg, run_dir=str(tmp_path / "a"), data_dir=synthetic_mnist_dir,
                         progress=False, plots=False)["variants"][0]["runs"][0]
    real_fit = minicnn.train.Trainer.fit

    def stop_after_one_epoch(self, x, y, epochs, *a, **k):
        real_fit(self, x, y, 1)          # epoch 1 done and checkpointed, then "Ctrl-C"
        raise KeyboardInterrupt

    monkeypatch.setattr(minicnn.train.Trainer, "fit", stop_after_one_epoch)
    run_dir = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, run_dir=str(run_dir), data_dir=synthetic_mnist_dir, progress=False, plots=False)
    assert (run_dir / "models" / "max-seed0.partial.npz").is_file()
    assert not (run_dir / "parts" / "max-seed0.json").exists()

    monkeypatch.setattr(minicnn.train.Trainer, "fit", real_fit)
    resumed = run_study(cfg, run_dir=str(run_dir), data_dir=synthetic_mnist_dir,
                        progress=False, plots=False)["variants"][0]["runs"][0]
    assert not (run_dir / "models" / "max-seed0.partial.npz").exists()
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]


def test_resume_refuses_a_folder_made_with_other_settings(study_run):
    run_dir, first = study_run
    with pytest.raises(StudyError, match="epochs: folder has 1, this run asks for 2"):
        run_study(tiny_config(variants=("max",), epochs=2), run_dir=run_dir,
                  data_dir=first["meta"]["data_dir"], progress=False, plots=False)


def test_without_matplotlib_the_study_runs_and_says_it_skipped_plots(synthetic_mnist_dir, tmp_path,
                                                                      monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # `import matplotlib` now fails
    run_dir = str(tmp_path / "run")
    results = run_study(tiny_config(variants=("gap",)), run_dir=run_dir,
                        data_dir=synthetic_mnist_dir, progress=False)
    assert "matplotlib is not installed" in results["plots"]["skipped"]
    assert "skipped the plots" in capsys.readouterr().out
    assert not [f for f in os.listdir(run_dir) if f.endswith(".png")]
    assert "Plots skipped: matplotlib is not installed" in open(os.path.join(run_dir, "report.md")).read()


# ---------------------------------------------------------------------- CLI
def test_cli_study_prints_the_markdown_table(synthetic_mnist_dir, tmp_path, capsys):
    run_dir = tmp_path / "cli"
    code = main(["study", "--quick", "--variants", "gap", "--limit-train", "64", "--limit-test", "32",
                 "--limit-shift", "8", "--run-dir", str(run_dir), "--data-dir", synthetic_mnist_dir,
                 "--no-plots", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| # | variant" in out and "GAP head" in out and "5,130" in out
    assert (run_dir / "report.md").is_file()
    assert json.loads((run_dir / "results.json").read_text())["config"]["quick"] is True


@pytest.mark.parametrize("args, fragment", [
    (["study", "--seeds", "0"], "--seeds: expected a positive integer"),
    (["study", "--epochs", "x"], "--epochs: expected a positive integer"),
    (["study", "--variants", "max,median"], "--variants: unknown variant(s) median"),
    (["study", "--variants", ","], "--variants: empty list"),
    (["study", "--lr", "-1"], "--lr: expected a positive"),
    (["study", "--limit-train", "0"], "--limit-train: expected a positive integer"),
])
def test_cli_study_invalid_flags_exit_2(args, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert fragment in capsys.readouterr().err


def test_cli_full_mode_needs_three_seeds(capsys):
    assert main(["study", "--seeds", "2"]) == 2
    assert "--seeds >= 3" in capsys.readouterr().err


def test_cli_ctrl_c_says_how_to_resume_the_study(monkeypatch, capsys):
    import minicnn.study
    from minicnn.train import TrainingInterrupted

    def interrupted(*a, **k):
        raise TrainingInterrupted("interrupted", os.path.join("runs", "x", "models", "max-seed0.partial.npz"))

    monkeypatch.setattr(minicnn.study, "run_study", interrupted)
    assert main(["study", "--quick", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"--run-dir {os.path.join('runs', 'x')}" in err and "minicnn train" not in err


# --------------------------------------------------- audit: run folder, data
def test_run_dir_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    no_data = str(tmp_path / "no-mnist")             # the folder is checked before the data
    for run_dir in (a_file, a_file / "x", a_file / "x" / "y"):
        with pytest.raises(StudyError, match=r"--run-dir .*: .*is a file; expected a folder"):
            run_study(tiny_config(variants=("gap",)), run_dir=str(run_dir), data_dir=no_data,
                      progress=False, plots=False)
        assert main(["study", "--quick", "--variants", "gap", "--run-dir", str(run_dir),
                     "--data-dir", no_data, "--no-plots", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("minicnn study: --run-dir ") and "expected a folder" in err
        assert err.count("\n") == 1                    # one line, no traceback
    assert a_file.read_text() == "mine\n"


@pytest.mark.parametrize("content, why", [("garbage\n", "Expecting value"),
                                          ("[1, 2]\n", "expected a JSON object, found list")])
def test_damaged_settings_json_is_a_study_error(content, why, synthetic_mnist_dir, tmp_path):
    (tmp_path / "settings.json").write_text(content)
    with pytest.raises(StudyError, match=f"run folder {tmp_path}: settings.json is unreadable") as e:
        run_study(tiny_config(variants=("gap",)), run_dir=str(tmp_path), data_dir=synthetic_mnist_dir,
                  progress=False, plots=False)
    assert why in str(e.value) and "--run-dir" in str(e.value)


def test_missing_mnist_leaves_no_run_folder_and_no_settings(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    old.mkdir()
    for run_dir in (new, old):
        with pytest.raises(MNISTNotFoundError):
            run_study(tiny_config(variants=("gap",)), run_dir=str(run_dir),
                      data_dir=str(tmp_path / "no-mnist"), progress=False, plots=False)
    assert not new.exists() and list(old.iterdir()) == []
    # nothing locked in: the same folder then takes other settings
    with pytest.raises(MNISTNotFoundError):
        run_study(tiny_config(variants=("gap",), epochs=2), run_dir=str(old),
                  data_dir=str(tmp_path / "no-mnist"), progress=False, plots=False)


# ------------------------------------------------------- audit: warm-up
def _tiny_data(folder):
    x, y = load_mnist(folder, "train", limit=128)
    xt, yt = load_mnist(folder, "test", limit=32)
    return {"train": (x, y), "test": (xt, yt), "shift": (xt[:8], yt[:8])}


def test_warm_up_runs_on_one_full_batch_before_the_timed_epochs(synthetic_mnist_dir, monkeypatch):
    events = []
    real_warm_up, real_fit = runner.warm_up, minicnn.train.Trainer.fit

    def recording_warm_up(model, xb, yb):
        events.append(("warm_up", len(xb), len(yb)))
        real_warm_up(model, xb, yb)

    def recording_fit(self, *a, **k):
        events.append(("fit",))
        return real_fit(self, *a, **k)

    monkeypatch.setattr(runner, "warm_up", recording_warm_up)
    monkeypatch.setattr(minicnn.train.Trainer, "fit", recording_fit)
    runner.train_one("gap", 0, tiny_config(batch_size=32), _tiny_data(synthetic_mnist_dir), False)
    assert events == [("warm_up", 32, 32), ("fit",)]


@pytest.mark.parametrize("name", ["stochastic", "strided"])
def test_warm_up_leaves_weights_losses_and_accuracy_bit_for_bit_unchanged(name, synthetic_mnist_dir,
                                                                          monkeypatch):
    """Same seed, same data order: with and without the warm-up the run is identical
    (stochastic pooling: its sampling generator is not advanced by the warm-up)."""
    cfg, data = tiny_config(batch_size=32), _tiny_data(synthetic_mnist_dir)
    warm_model, warm = runner.train_one(name, 0, cfg, data, False)
    monkeypatch.setattr(runner, "warm_up", lambda *a: None)
    cold_model, cold = runner.train_one(name, 0, cfg, data, False)
    assert [h["train_loss"] for h in warm["history"]] == [h["train_loss"] for h in cold["history"]]
    assert [h["train_accuracy"] for h in warm["history"]] == [h["train_accuracy"] for h in cold["history"]]
    assert (warm["test_loss"], warm["test_accuracy"]) == (cold["test_loss"], cold["test_accuracy"])
    assert warm["shift"] == cold["shift"]
    for (n, a), (_, b) in zip(warm_model.named_params(), cold_model.named_params()):
        np.testing.assert_array_equal(a, b, err_msg=n)


def test_warm_up_touches_neither_the_model_nor_its_generators():
    model = build_variant("stochastic", 3)
    before = [p.copy() for _, p in model.named_params()]
    rng_states = [l.rng.bit_generator.state for l in model.layers if hasattr(l, "rng")]
    xb = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    model.eval()
    runner.warm_up(model, xb, np.array([0, 1, 2, 3]))
    assert not model.training                              # its mode is left as it was
    for a, (_, b) in zip(before, model.named_params()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.any(g) for _, g in model.named_grads())
    assert rng_states == [l.rng.bit_generator.state for l in model.layers if hasattr(l, "rng")]


# ------------------------------------------------------- audit: stale plots
def test_a_rerun_without_plots_removes_the_earlier_runs_pngs(synthetic_mnist_dir, tmp_path):
    for name in PLOT_FILES:
        (tmp_path / name).write_bytes(PNG_MAGIC + b"an earlier run")
    (tmp_path / "mine.png").write_bytes(PNG_MAGIC)
    results = run_study(tiny_config(variants=("gap",)), run_dir=str(tmp_path),
                        data_dir=synthetic_mnist_dir, progress=False, plots=False)
    assert results["plots"] == {"skipped": "--no-plots"}
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == ["mine.png"]
    assert "Plots skipped: --no-plots." in (tmp_path / "report.md").read_text()


# ------------------------------------------------------ audit: --variants
@pytest.mark.parametrize("text", ["", ",", " , ,"])
def test_an_empty_variant_list_says_empty(text):
    with pytest.raises(ValueError, match="empty list") as e:
        parse_variant_list(text)
    assert "unknown" not in str(e.value) and "nopool, max" in str(e.value)
    with pytest.raises(StudyError, match="variants: empty list"):
        StudyConfig(variants=())
    assert parse_variant_list(" max,avg, max") == ("max", "avg")


# ------------------------------------------------------ audit: the example
def run_example(monkeypatch, *args):
    """examples/pooling_study.py ARGS in this process -> its SystemExit code (0 if none)."""
    import runpy
    monkeypatch.setattr(sys, "argv", ["pooling_study.py", *args])
    try:
        runpy.run_path(EXAMPLE, run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def test_example_without_mnist_gives_the_clis_message_and_status(tmp_path, monkeypatch, capsys):
    flags = ["--quick", "--variants", "gap", "--run-dir", str(tmp_path / "run"),
             "--data-dir", str(tmp_path / "no-mnist")]
    assert main(["study", *flags, "--no-progress"]) == 1
    cli_message = capsys.readouterr().err.removeprefix("minicnn study: ").rstrip("\n")
    assert cli_message.startswith("MNIST not found")
    code = run_example(monkeypatch, *flags)
    assert code == f"pooling_study.py: {cli_message}"      # sys.exit(text): the text, status 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, status, fragment", [
    (["--variants", ","], 2, "--variants: empty list"),
    (["--variants", "max,median"], 2, "--variants: unknown variant(s) median"),
    (["--seeds", "0"], 2, "--seeds: expected a positive integer"),
])
def test_example_invalid_flags_exit_2(args, status, fragment, monkeypatch, capsys):
    assert run_example(monkeypatch, *args) == status
    assert fragment in capsys.readouterr().err


def test_example_run_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    code = run_example(monkeypatch, "--quick", "--run-dir", str(tmp_path / "f"))
    assert code.startswith(f"pooling_study.py: --run-dir {tmp_path / 'f'}: is a file; expected a folder")


# ------------------------------------------------------ audit: wording
def test_caption_and_notes_say_1_seed_1_epoch_and_plurals(study_run):
    _, results = study_run
    one = study_report.caption(results)
    assert one.startswith("Test accuracy: 1 seed (no std) on 64 test images; 1 epoch on 256 training images;")
    assert "one seed, so no standard deviation" in study_report.notes(results)
    many = dict(results, config=dict(results["config"], seeds=3, epochs=2, seed_list=[0, 1, 2]),
                meta=dict(results["meta"], sizes={"n_train": 1, "n_test": 2000, "n_shift": 1}))
    text = study_report.caption(many)
    assert text.startswith("Test accuracy: mean ± std over 3 seeds on 2,000 test images; "
                           "2 epochs on 1 training image; shifts on 1 test image,")
    assert "mean ± sample std over seeds" in study_report.notes(many)
