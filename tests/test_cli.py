"""The `minicnn` command: train/evaluate/summary/gradcheck, errors, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minicnn.cli import main


def run_module(*args, env=None):
    """`python -m minicnn ARGS` in a subprocess."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "minicnn", *args], capture_output=True, text=True,
                          env=e, timeout=300)


def test_train_writes_metrics_and_checkpoint_then_evaluate_reads_it(synthetic_mnist_dir, tmp_path, capsys):
    metrics, ck = tmp_path / "m.json", tmp_path / "ck.npz"
    code = main(["train", "--model", "lenet", "--epochs", "2", "--batch-size", "32",
                 "--data-dir", synthetic_mnist_dir, "--limit-train", "256", "--no-progress",
                 "--metrics", str(metrics), "--save", str(ck), "--lr", "0.05"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out
    m = json.loads(metrics.read_text())
    assert m["model"] == "lenet" and m["num_params"] == 9098
    assert len(m["train_loss"]) == len(m["train_accuracy"]) == len(m["seconds_per_epoch"]) == 2
    assert 0.0 <= m["test_accuracy"] <= 1.0
    assert main(["evaluate", "--load", str(ck), "--data-dir", synthetic_mnist_dir]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * m['test_accuracy']:.2f} %" in out


def test_resume_continues_to_the_requested_epochs(synthetic_mnist_dir, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    common = ["--model", "lenet", "--batch-size", "64", "--data-dir", synthetic_mnist_dir,
              "--limit-train", "128", "--no-progress"]
    assert main(["train", *common, "--epochs", "1", "--save", str(ck)]) == 0
    assert main(["train", *common, "--epochs", "2", "--resume", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "resuming lenet" in out and "epoch 2:" in out


def _interrupt_at(monkeypatch, where):
    """Make the next in-process `minicnn train` stop (as Ctrl-C does) after
    the step named ``where``."""
    from minicnn.train import Trainer
    original = Trainer.train_step

    def step(self, xb, yb, at):
        out = original(self, xb, yb, at)
        if at == where:
            self._stop_requested = True
        return out
    monkeypatch.setattr(Trainer, "train_step", step)


def test_resume_alone_continues_the_saved_run_bit_for_bit(synthetic_mnist_dir, tmp_path, monkeypatch, capsys):
    """`train --resume PATH` with no other flag (what the Ctrl-C message
    says to run) restores the interrupted run's settings from the
    checkpoint: the result equals the uninterrupted run's bit for bit, though
    every setting differs from the model's recipe."""
    from minicnn import checkpoint
    flags = ["--model", "lenet", "--optimizer", "adam", "--lr", "0.002", "--schedule", "onecycle",
             "--epochs", "2", "--batch-size", "32", "--limit-train", "160", "--seed", "3",
             "--grad-clip", "5", "--data-dir", synthetic_mnist_dir, "--no-progress"]
    ref, ck = tmp_path / "ref.npz", tmp_path / "ck.npz"
    assert main(["train", *flags, "--save", str(ref)]) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, "epoch 2, step 2")
        assert main(["train", *flags, "--save", str(ck)]) == 130
    hint = [l for l in capsys.readouterr().err.splitlines() if "resume with" in l][0]
    assert hint.endswith(f"minicnn train --resume {ck} --data-dir {synthetic_mnist_dir}")
    assert main(["train", "--resume", str(ck), "--data-dir", synthetic_mnist_dir, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming lenet" in out and "adam lr 0.002 (onecycle)" in out and "changed" not in out
    want, got = checkpoint.load(str(ref))[0], checkpoint.load(str(ck))[0]
    for (n, a), (_, b) in zip(want.named_params(), got.named_params()):
        assert np.array_equal(a, b), f"{n} differs after resume"


def test_resume_names_the_flags_that_change_the_run(synthetic_mnist_dir, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    common = ["--data-dir", synthetic_mnist_dir, "--no-progress"]
    assert main(["train", "--model", "lenet", "--epochs", "1", "--batch-size", "64", "--limit-train", "128",
                 "--lr", "0.01", "--schedule", "constant", "--save", str(ck), *common]) == 0
    assert main(["train", "--resume", str(ck), "--epochs", "2", "--lr", "0.02", *common]) == 0
    out = capsys.readouterr().out
    assert "sgd lr 0.02 (constant)" in out and "on 128 MNIST images" in out
    assert ("changed from the checkpoint's run: --epochs 2 (the checkpoint's run: 1); "
            "--lr 0.02 (the checkpoint's run: 0.01)") in out
    with pytest.raises(SystemExit, match="--optimizer adam does not match the checkpoint's optimiser SGD"):
        main(["train", "--resume", str(ck), "--optimizer", "adam", *common])
    with pytest.raises(SystemExit, match="--model default does not match the checkpoint's model lenet"):
        main(["train", "--resume", str(ck), "--model", "default", *common])


def test_summary_prints_the_table(capsys):
    assert main(["summary", "--model", "default"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 421,642" in out
    assert "(None, 64, 7, 7)" in out


def test_gradcheck_command_passes_everything(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "all passed" in out
    for name in ("Conv2D", "Dense", "ReLU", "MaxPool2D", "AvgPool2D", "LPPool2D", "MixedPool2D",
                 "StochasticPool2D", "FractionalMaxPool2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D",
                 "GlobalAvgPool2D", "GlobalMaxPool2D", "SpatialPyramidPool2D", "MaxUnpool2D", "model:"):
        assert name in out


def test_gradcheck_command_fails_on_a_broken_backward(monkeypatch, capsys):
    import minicnn as mc

    def wrong(self, dout):   # routes the gradient through negatives too
        return dout.copy()
    monkeypatch.setattr(mc.ReLU, "backward", wrong)
    assert main(["gradcheck", "--layers", "ReLU"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [
    (["train", "--epochs", "0"], "--epochs: expected a positive integer"),
    (["train", "--lr", "abc"], "--lr: expected a positive number"),
    (["train", "--optimizer", "rmsprop"], "--optimizer: invalid choice"),
    (["train", "--model", "nope"], "--model: invalid choice"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["summary", "--input-shape", "1,28"], "--input-shape: expected C,H,W"),
])
def test_invalid_flags_exit_2_with_argparse_message(args, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert fragment in capsys.readouterr().err


def test_invalid_flag_in_subprocess_has_no_traceback():
    r = run_module("train", "--batch-size", "-3")
    assert r.returncode == 2
    assert "--batch-size: expected a positive integer" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_folder_says_how_to_get_mnist(tmp_path):
    r = run_module("train", "--data-dir", str(tmp_path / "empty"), "--no-progress")
    assert r.returncode == 1
    assert "download_mnist.py" in r.stderr and "Traceback" not in r.stderr


def test_bad_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    r = run_module("evaluate", "--load", str(bad))
    assert r.returncode == 1
    assert "bad.npz" in r.stderr and "Traceback" not in r.stderr


def test_python_dash_m_matches_console_entry(capsys):
    r = run_module("summary", "--model", "lenet")
    assert r.returncode == 0
    assert main(["summary", "--model", "lenet"]) == 0
    assert r.stdout == capsys.readouterr().out


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    """A real SIGINT to `minicnn train`: exit 130, one line naming --resume,
    and a checkpoint that loads and can be resumed."""
    import signal
    import time

    from conftest import write_mnist_folder
    from minicnn import checkpoint

    data = write_mnist_folder(tmp_path / "data", n_train=4000, n_test=100)
    ck = tmp_path / "ck.npz"
    proc = subprocess.Popen([sys.executable, "-m", "minicnn", "train", "--model", "lenet",
                             "--epochs", "50", "--batch-size", "16", "--data-dir", data,
                             "--save", str(ck)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        seen = ""
        while "batch" not in seen and time.time() < deadline:   # the progress bar has started
            seen += proc.stderr.read(1)
        assert "batch" in seen, "training never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if "resume with" in l]
    assert len(lines) == 1 and f"minicnn train --resume {ck}" in lines[0]
    model, meta, optim = checkpoint.load(str(ck))
    assert meta["extra"]["model_name"] == "lenet" and optim["steps"] > 0


def test_bad_inputs_give_one_line_naming_the_flag_or_file(synthetic_mnist_dir, tmp_path, capsys):
    """Each of these failed with a traceback before (an audit of the CLI):
    one line on stderr naming the flag or file, a non-zero status, and no
    training started for the output paths."""
    from conftest import write_mnist_folder
    from minicnn import checkpoint
    from minicnn.layers import Dense, Flatten
    from minicnn.model import Sequential

    bad = write_mnist_folder(tmp_path / "bad", n_train=64, n_test=32, gz=False)
    labels = os.path.join(bad, "train-labels-idx1-ubyte")
    with open(labels, "r+b") as f:
        f.truncate(os.path.getsize(labels) - 3)
    assert main(["train", "--model", "lenet", "--epochs", "1", "--data-dir", bad, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "minicnn train:" in err and "train-labels-idx1-ubyte: truncated" in err

    with pytest.raises(SystemExit) as e:
        main(["train", "--momentum", "nan"])
    assert e.value.code == 2 and "--momentum: expected a number in [0, 1), got 'nan'" in capsys.readouterr().err

    assert main(["summary", "--model", "lenet", "--input-shape", "3,28,28"]) == 2
    err = capsys.readouterr().err
    assert "minicnn summary: --input-shape 3,28,28 does not fit model lenet" in err and err.count("\n") == 1

    small = Sequential([Flatten(), Dense(64, 10)], input_shape=(1, 8, 8))
    ck8 = tmp_path / "eight.npz"
    checkpoint.save(str(ck8), small)
    assert main(["evaluate", "--load", str(ck8), "--data-dir", synthetic_mnist_dir]) == 1
    assert "the model takes input (1, 8, 8) (C, H, W); MNIST images are (1, 28, 28)" in capsys.readouterr().err
    assert main(["train", "--resume", str(ck8), "--data-dir", synthetic_mnist_dir]) == 1
    assert "no training state to resume from" in capsys.readouterr().err

    ck = tmp_path / "ck.npz"
    common = ["--model", "lenet", "--epochs", "1", "--limit-train", "64", "--data-dir", synthetic_mnist_dir,
              "--no-progress"]
    assert main(["train", *common, "--save", str(ck)]) == 0
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.startswith("optim/") and "/" in k[len("optim/"):])
    arrays[key] = np.zeros(arrays[key].size + 1, arrays[key].dtype)
    broken = tmp_path / "broken.npz"
    np.savez(broken, **arrays)
    assert main(["train", "--resume", str(broken), "--data-dir", synthetic_mnist_dir, "--no-progress"]) == 1
    assert "its training state does not fit the model and optimiser" in capsys.readouterr().err

    (tmp_path / "afile").write_text("x")
    for flag_name, path, why in (("--save", tmp_path, "is a folder"),
                                 ("--metrics", tmp_path, "is a folder"),
                                 ("--save", tmp_path / "afile" / "x.npz", "cannot create the folder")):
        with pytest.raises(SystemExit, match=rf"minicnn train: {flag_name} .*: {why}"):
            main(["train", *common, flag_name, str(path)])
        assert "training" not in capsys.readouterr().out


def test_more_failures_give_one_line(synthetic_mnist_dir, tmp_path, monkeypatch, capsys):
    """A second audit: a failed download, --data-dir naming a file, a JSON
    file given as a checkpoint, unknown --layers, a finished run resumed."""
    import minicnn.download
    from minicnn.download import DownloadError

    def offline(folder, **kwargs):
        raise DownloadError("could not download train-images-idx3-ubyte.gz from any mirror")
    monkeypatch.setattr(minicnn.download, "download_mnist", offline)
    assert main(["train", "--download", "--data-dir", str(tmp_path / "empty"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == "minicnn train: could not download train-images-idx3-ubyte.gz from any mirror\n"

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"--data-dir .*afile: is a file; give the folder"):
        main(["train", "--data-dir", str(tmp_path / "afile")])

    (tmp_path / "m.json").write_text('{"model": "lenet"}')
    assert main(["evaluate", "--load", str(tmp_path / "m.json"), "--data-dir", synthetic_mnist_dir]) == 1
    assert "not a minicnn checkpoint (an .npz archive" in capsys.readouterr().err

    assert main(["gradcheck", "--layers", "Dense", "Foo"]) == 2
    err = capsys.readouterr().err
    assert "--layers 'Foo' names no case" in err and "\n  Conv2D stride 2, 2x3 kernel" in err
    assert main(["gradcheck", "--layers", " "]) == 2
    with pytest.raises(SystemExit):
        main(["gradcheck", "--layers"])                     # argparse: at least one name
    capsys.readouterr()

    ck, metrics = tmp_path / "ck.npz", tmp_path / "m2.json"
    common = ["--data-dir", synthetic_mnist_dir, "--no-progress"]
    assert main(["train", "--model", "lenet", "--epochs", "1", "--limit-train", "64", "--save", str(ck),
                 *common]) == 0
    assert "1 epoch, batch" in capsys.readouterr().out
    assert main(["train", "--resume", str(ck), *common]) == 0
    out = capsys.readouterr().out
    assert "the run is already complete (1 of 1 epoch); give --epochs N with N > 1" in out
    assert "epoch 1:" not in out                            # nothing trained, no old history printed
    with monkeypatch.context() as m:
        _interrupt_at(m, "epoch 1, step 1")
        assert main(["train", "--model", "lenet", "--epochs", "1", "--limit-train", "128", "--save", str(ck),
                     "--metrics", str(metrics), *common]) == 130
    hint = [l for l in capsys.readouterr().err.splitlines() if "resume with" in l][0]
    assert hint.endswith(f"--resume {ck} --data-dir {synthetic_mnist_dir} --metrics {metrics}")


@pytest.mark.parametrize("kwargs, good, bad", [
    ({}, ["0", "0.5", "1e300"], ["-1e-9", "nan", "inf", "x"]),                      # finite, >= 0
    ({"strict": True}, ["1e-300", "2"], ["0", "-0.0", "-1", "inf"]),                 # > 0
    ({"below": 1.0}, ["0", "0.999"], ["1", "1.5", "-0.1", "nan"]),                   # [0, 1)
    ({"strict": True, "below": 1.0}, ["0.5"], ["0", "1"]),                           # (0, 1)
])
def test_number_bounds(kwargs, good, bad):
    """The argparse type every numeric flag uses: ``>= minimum`` (``>`` when
    ``strict``), ``< below`` when given, finite; one message for all else."""
    import argparse
    from minicnn.cli import number
    parse = number(float, 0.0, "the thing", **kwargs)
    for text in good:
        assert parse(text) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected the thing, got {text!r}"):
            parse(text)
    as_int = number(int, 1, "a positive integer")
    assert as_int("3") == 3
    for text in ("0", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer"):
            as_int(text)
