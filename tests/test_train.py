"""End-to-end training, the Trainer's safety properties and resume."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn import checkpoint
from minicnn.data import load_mnist
from minicnn.train import NonFiniteError, Trainer, TrainingInterrupted, evaluate, predict


def small_model(seed=0):
    mc.manual_seed(seed)
    return mc.Sequential([mc.Conv2D(1, 8, 3, padding=1), mc.ReLU(), mc.MaxPool2D(2),
                          mc.Conv2D(8, 16, 3, padding=1), mc.ReLU(), mc.MaxPool2D(2),
                          mc.Flatten(), mc.Dense(16 * 7 * 7, 10)], input_shape=(1, 28, 28))


def make_trainer(model, seed=0, **kw):
    opt = mc.Adam(model.parameters(), lr=2e-3)
    return Trainer(model, opt, batch_size=32, seed=seed, progress=False, **kw)


def test_end_to_end_synthetic_learns(synthetic_mnist_dir):
    x, y = load_mnist(synthetic_mnist_dir, "train")
    xt, yt = load_mnist(synthetic_mnist_dir, "test")
    model = small_model()
    _, before = evaluate(model, xt, yt)
    history = make_trainer(model).fit(x, y, 3, xt, yt)
    _, after = evaluate(model, xt, yt)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert after >= 0.95, f"synthetic test accuracy {after:.3f} (was {before:.3f} untrained)"


def test_end_to_end_real_mnist_subset(real_mnist_dir):
    """2,000 real training images, 2 epochs: a meaningful accuracy in seconds."""
    x, y = load_mnist(real_mnist_dir, "train", limit=2000)
    xt, yt = load_mnist(real_mnist_dir, "test")
    model = small_model()
    make_trainer(model).fit(x, y, 2)
    _, acc = evaluate(model, xt[:2000], yt[:2000])
    assert acc >= 0.85, f"real-MNIST accuracy after 2 epochs on 2k images: {acc:.3f}"


def test_training_is_reproducible_from_seed(synthetic_mnist_dir):
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=200)
    weights = []
    for _ in range(2):
        model = small_model(seed=3)
        make_trainer(model, seed=5).fit(x, y, 2)
        weights.append([p.copy() for _, p in model.named_params()])
    for a, b in zip(*weights):
        assert np.array_equal(a, b)


def _poison_after(model, step):
    """Make the first Dense layer produce NaN from the given forward call on."""
    dense = [l for l in model.layers if isinstance(l, mc.Dense)][0]
    calls = {"n": 0}
    original = dense.forward

    def forward(x):
        calls["n"] += 1
        out = original(x)
        return out * np.nan if calls["n"] >= step else out
    dense.forward = forward


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(synthetic_mnist_dir, tmp_path):
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=128)   # 4 steps per epoch
    model = small_model()
    path = str(tmp_path / "ck.npz")
    trainer = make_trainer(model, checkpoint_path=path)
    trainer.fit(x, y, 1)                                          # epoch 1 saved
    good = {n: p.copy() for n, p in model.named_params()}
    _poison_after(model, 3)                                       # 3rd step of epoch 2
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 3"):
        trainer.fit(x, y, 2)
    saved, meta, _ = checkpoint.load(path)
    assert meta["extra"]["epoch"] == 1
    for n, p in saved.named_params():
        assert np.array_equal(p, good[n])                         # the last good checkpoint is kept


def test_nan_gradient_is_caught_before_the_update(synthetic_mnist_dir):
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=64)
    model = small_model()
    trainer = make_trainer(model)
    conv = model.layers[0]
    original = model.backward

    def backward(dout, input_grad=True):      # the first conv's dW turns non-finite
        out = original(dout, input_grad)
        conv.grads["W"][0, 0, 0, 0] = np.inf
        return out
    model.backward = backward
    before = {n: p.copy() for n, p in model.named_params()}
    with pytest.raises(NonFiniteError, match=r"conv2d\.W.*epoch 1, step 1"):
        trainer.fit(x, y, 1)
    for n, p in model.named_params():
        assert np.array_equal(p, before[n]), f"{n} was updated with a non-finite gradient"


def test_grad_clip_bounds_the_update(synthetic_mnist_dir):
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=32)
    model = small_model()
    before = {n: p.copy() for n, p in model.named_params()}
    opt = mc.SGD(model.parameters(), lr=1.0)
    Trainer(model, opt, batch_size=32, progress=False, grad_clip=1e-3).fit(x, y, 1)
    step = np.sqrt(sum(float(np.sum((p - before[n]).astype(np.float64) ** 2)) for n, p in model.named_params()))
    assert step == pytest.approx(1e-3, rel=1e-3)                  # lr * clipped norm


def test_interrupt_saves_and_resume_reproduces_uninterrupted_run_bit_for_bit(synthetic_mnist_dir, tmp_path):
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=256)   # 8 steps per epoch
    # the uninterrupted reference: 2 epochs, one-cycle Adam
    ref = small_model(seed=1)
    opt = mc.Adam(ref.parameters(), lr=2e-3)
    sched = mc.OneCycleLR(opt, max_lr=2e-3, total_steps=16)
    Trainer(ref, opt, batch_size=32, seed=4, scheduler=sched, progress=False).fit(x, y, 2)

    # the same run, "Ctrl-C" after step 3 of epoch 2
    model = small_model(seed=1)
    opt = mc.Adam(model.parameters(), lr=2e-3)
    sched = mc.OneCycleLR(opt, max_lr=2e-3, total_steps=16)
    path = str(tmp_path / "run.npz")
    trainer = Trainer(model, opt, batch_size=32, seed=4, scheduler=sched, progress=False, checkpoint_path=path)
    original = trainer.train_step

    def step(xb, yb, where):
        out = original(xb, yb, where)
        if where == "epoch 2, step 3":
            trainer._stop_requested = True                        # what the SIGINT handler does
        return out
    trainer.train_step = step
    with pytest.raises(TrainingInterrupted, match=r"resume with: minicnn train --resume"):
        trainer.fit(x, y, 2)
    assert checkpoint.load(path)[1]["extra"]["epoch_seconds"] > 0   # the time before the stop is kept

    # resume in a fresh process-like setting: everything rebuilt from the file
    model2, meta, optim_arrays = checkpoint.load(path)
    opt2 = mc.Adam(model2.parameters(), lr=2e-3)
    sched2 = mc.OneCycleLR(opt2, max_lr=2e-3, total_steps=16)
    t2 = Trainer(model2, opt2, batch_size=32, seed=4, scheduler=sched2, progress=False)
    t2.restore(meta["extra"], optim_arrays)
    assert (t2.epoch, t2.step) == (1, 3)
    history = t2.fit(x, y, 2)
    assert len(history) == 2
    for (n, a), (_, b) in zip(ref.named_params(), model2.named_params()):
        assert np.array_equal(a, b), f"{n} differs after resume"


def test_predict_and_evaluate_restore_training_mode(synthetic_mnist_dir):
    x, y = load_mnist(synthetic_mnist_dir, "test", limit=50)
    model = small_model()
    model.train()
    pred = predict(model, x, batch_size=16)
    assert pred.shape == (50,) and pred.dtype.kind == "i"
    assert model.training
    _, acc = evaluate(model, x, y)
    assert acc == pytest.approx(np.mean(pred == y))


def test_trainer_rejects_bad_settings():
    model = small_model()
    opt = mc.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, opt, batch_size=0)
    with pytest.raises(ValueError, match="grad_clip"):
        Trainer(model, opt, batch_size=8, grad_clip=-1)


def test_resume_is_bit_exact_with_a_stochastic_layer(synthetic_mnist_dir, tmp_path):
    """The stochastic layer's RNG state travels in the checkpoint."""
    x, y = load_mnist(synthetic_mnist_dir, "train", limit=128)   # 4 steps per epoch

    def build():
        mc.manual_seed(2)
        return mc.Sequential([mc.Conv2D(1, 4, 3, padding=1), mc.ReLU(), mc.StochasticPool2D(2, seed=9),
                              mc.Flatten(), mc.Dense(4 * 14 * 14, 10)], input_shape=(1, 28, 28))
    ref = build()
    make_trainer(ref).fit(x, y, 2)

    model = build()
    path = str(tmp_path / "s.npz")
    trainer = make_trainer(model, checkpoint_path=path)
    original = trainer.train_step

    def step(xb, yb, where):
        out = original(xb, yb, where)
        if where == "epoch 1, step 2":
            trainer._stop_requested = True
        return out
    trainer.train_step = step
    with pytest.raises(TrainingInterrupted):
        trainer.fit(x, y, 2)
    model2, meta, arrays = checkpoint.load(path)
    assert "stochasticpool2d" in meta["extra"]["rng"]
    t2 = make_trainer(model2)
    t2.restore(meta["extra"], arrays)
    t2.fit(x, y, 2)
    for (n, a), (_, b) in zip(ref.named_params(), model2.named_params()):
        assert np.array_equal(a, b), f"{n} differs after resume"
