"""One training step and one epoch of ``lenet`` and ``default``, batch 64.

Same work in every column:

* minicnn: ``Trainer.train_step`` (step) and ``Trainer.fit`` for one epoch
  (no progress bar, no evaluation);
* numpy: :class:`benchmarks.references.NumpyNet` (textbook im2col CNN) with
  the same weights and optimiser; its epoch is the first batches of the
  epoch (about 20 s of them; 5 s with ``--quick``), timed in the same
  alternating rounds as the minicnn and torch epochs and scaled to the
  whole epoch (a real numpy epoch would take minutes);
* torch: ``nn.Sequential`` with the same layers and weights, the same
  optimiser, ``F.cross_entropy``, the same batches (``minicnn.data.batches``).

Optimisers: ``lenet`` SGD lr 0.05, momentum 0.9, Nesterov (the CLI recipe);
``default`` Adam lr 3e-3.

**minicnn's speed depends on the values.**  A convolution whose output
gradient is mostly zero (behind a max pooling and a ReLU) computes its
backward from the non-zero entries alone (``Conv2D.sparse_max_density``),
so how fast minicnn trains depends on how many units the ReLU cuts, which
depends on the training run.  So minicnn's epoch is the first epoch of the
real recipe (``minicnn train --model NAME``: for ``default`` Adam with the
one-cycle schedule over its 3 epochs, whose first steps have the densest
gradients), and the report says in how many of the epoch's convolution
backward passes the sparse path ran.  The ``default`` model's epoch is
also timed with the sparse path off, in the same rounds.  The numpy and
torch nets do the same dense arithmetic whatever the values, so they keep
the constant learning rate.  The fixed-batch step repeats one batch from
the same start, so its sparsity is that of a net trained on one batch:
the epoch, not the step, is what the target reads.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

import minicnn as mc
from benchmarks.harness import Stats, Timing, log, measure_interleaved, rotation
from benchmarks.references import NumpyNet
from benchmarks.report import make_record
from minicnn.data import MNISTNotFoundError, batches, find_data_dir, load_mnist
from minicnn.kernels import conv_sparse
from minicnn.layers.conv import Conv2D
from minicnn.models import MODELS, build_model
from minicnn.optim import OneCycleLR
from minicnn.train import Trainer

BATCH = 64
OPTIM = {"lenet": ("sgd", 0.05), "default": ("adam", 3e-3)}


def load_data(data_dir=None, tiny=False):
    """-> (x, y, note): real MNIST's training set when found, else random
    data of the same shape (the note says which)."""
    if not tiny:
        try:
            folder = find_data_dir(data_dir)
            x, y = load_mnist(folder, "train")
            return x, y, f"real MNIST from {folder}: {len(x):,} training images"
        except MNISTNotFoundError:
            pass
    n = 3 * 8 if tiny else 60_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    why = "tiny test run" if tiny else "MNIST not found"
    return x, y, f"synthetic ({why}): {n:,} random 1x28x28 images with random labels (the shape of MNIST)"


def minicnn_trainer(name, seed=0, batch=BATCH, recipe_steps=None, sparse=True):
    """A Trainer with the benchmark's optimiser; with ``recipe_steps`` (the
    number of batches in one epoch) and a one-cycle recipe, the schedule of
    ``minicnn train`` over the recipe's epochs too.  ``sparse=False``
    turns the convolutions' sparse backward off."""
    model = build_model(name, seed=seed)
    if not sparse:
        for layer in model.layers:
            if isinstance(layer, Conv2D):
                layer.sparse_max_density = 0.0
    opt_name, lr = OPTIM[name]
    params = model.parameters()
    opt = mc.SGD(params, lr=lr, momentum=0.9, nesterov=True) if opt_name == "sgd" else mc.Adam(params, lr=lr)
    recipe = MODELS[name].recipe
    scheduler = None
    if recipe_steps is not None and recipe.schedule == "onecycle":
        scheduler = OneCycleLR(opt, max_lr=lr, total_steps=recipe.epochs * recipe_steps)
    return Trainer(model, opt, batch_size=batch, seed=seed, progress=False, model_name=name, scheduler=scheduler)


@contextlib.contextmanager
def sparse_backward_count():
    """Counts, while active, the im2col-path convolution backward passes
    (``total``) and those that took the sparse path (``sparse``)."""
    counts = {"total": 0, "sparse": 0}
    backward, weight_grad = Conv2D._backward, conv_sparse.sparse_weight_grad

    def counted_backward(self, *args):
        counts["total"] += not self._direct
        return backward(self, *args)

    def counted_weight_grad(*args):
        counts["sparse"] += 1
        return weight_grad(*args)
    Conv2D._backward, conv_sparse.sparse_weight_grad = counted_backward, counted_weight_grad
    try:
        yield counts
    finally:
        Conv2D._backward, conv_sparse.sparse_weight_grad = backward, weight_grad


def numpy_net(model, name):
    opt_name, lr = OPTIM[name]
    return NumpyNet.from_minicnn(model, optimizer=opt_name, lr=lr, momentum=0.9, nesterov=True)


def torch_net(torch, model, name):
    """-> (net, step): the same architecture and weights in PyTorch, and a
    training step ``step(xb, yb)`` with the same optimiser."""
    nn = torch.nn
    layers = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
            m.weight.data = torch.from_numpy(layer.params["W"].copy())
            m.bias.data = torch.from_numpy(layer.params["b"].copy())
        elif kind == "Dense":
            m = nn.Linear(layer.in_features, layer.out_features)
            m.weight.data = torch.from_numpy(layer.params["W"].T.copy())
            m.bias.data = torch.from_numpy(layer.params["b"].copy())
        elif kind == "MaxPool2D":
            m = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif kind == "ReLU":
            m = nn.ReLU()
        elif kind == "Flatten":
            m = nn.Flatten()
        else:
            raise ValueError(f"no torch equivalent for {kind}")
        layers.append(m)
    net = nn.Sequential(*layers)
    opt_name, lr = OPTIM[name]
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True) if opt_name == "sgd"
           else torch.optim.Adam(net.parameters(), lr=lr))
    F = torch.nn.functional

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return net, step


def _epoch_times(fns, repeats):
    """``{name: epoch function}`` -> ``{name: Stats}``: ``repeats`` epochs
    of each, alternating (the order rotating), so a slow spell of the
    machine falls on all of them alike."""
    keys = list(fns)
    samples = {k: [] for k in keys}
    for r in range(repeats):
        for k in rotation(keys, r):
            samples[k].append(_wall(fns[k]))
    return {k: Stats.from_samples(v) for k, v in samples.items()}


def _wall(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(ctx):
    x, y, note = load_data(ctx.data_dir, ctx.tiny)
    batch = 8 if ctx.tiny else BATCH
    per_epoch = -(-len(x) // batch)
    recs = []
    for name in ("lenet", "default"):
        log(f"[training] {name}")
        tr = minicnn_trainer(name, batch=batch)
        xb, yb = x[:batch].copy(), y[:batch].copy()
        npnet = numpy_net(tr.model, name)
        tstep = torch_net(ctx.torch, tr.model, name)[1] if ctx.torch is not None else None

        steps = {"minicnn": lambda: tr.train_step(xb, yb, "benchmark"), "numpy": lambda: npnet.step(xb, yb)}
        timings = {"minicnn": ctx.timing, "torch": ctx.timing,
                   "numpy": Timing(repeats=ctx.np_timing.repeats, min_sample=ctx.np_timing.min_sample, warmup=1)}
        if tstep is not None:
            txb, tyb = ctx.torch.from_numpy(xb), ctx.torch.from_numpy(yb)
            steps["torch"] = lambda: tstep(txb, tyb)
        st = measure_interleaved(steps, timings)          # in alternation: same minutes for all
        mc_step, np_step, t_step = st["minicnn"], st["numpy"], st.get("torch")
        recs.append(make_record("training", name, "step", {"minicnn": mc_step, "numpy": np_step, "torch": t_step},
                                config=f"batch {batch}", shape=f"{batch}x1x28x28"))

        # ---- one epoch: the whole training set, unless the step times say it
        # would take longer than the budget (a busy machine); then the first
        # batches are timed and scaled, and the note says so
        budget = 1e9 if ctx.tiny else 30.0 if ctx.quick else 180.0
        slowest = max(mc_step.median, t_step.median if t_step is not None else 0.0)
        n_batches = per_epoch if ctx.tiny else max(20, min(per_epoch, int(budget / max(slowest, 1e-9))))
        if ctx.quick and name == "default":
            n_batches = min(n_batches, 150)
        reps = 1 if (ctx.tiny or ctx.quick or name == "default") else 3
        xs, ys = x[:n_batches * batch], y[:n_batches * batch]
        scale = per_epoch / -(-len(xs) // batch)
        log(f"[training] {name} epoch: {n_batches} batches x {reps}")
        share = {}

        def minicnn_epoch(sparse=True):
            with sparse_backward_count() as counts:
                minicnn_trainer(name, batch=batch, recipe_steps=per_epoch, sparse=sparse).fit(xs, ys, 1)
            share[sparse] = counts

        epochs = {"minicnn": minicnn_epoch}
        if name == "default":
            epochs["minicnn, sparse off"] = lambda: minicnn_epoch(sparse=False)
        if tstep is not None:
            torch = ctx.torch
            tstep2 = torch_net(torch, build_model(name), name)[1]

            def torch_epoch():
                for bx, by in batches(xs, ys, batch, shuffle=True, seed=0, epoch=0):
                    tstep2(torch.from_numpy(bx), torch.from_numpy(by))

            epochs["torch"] = torch_epoch
        # the numpy net trains on the first batches of the same epoch, timed in
        # the same rounds as the other two (a whole numpy epoch would take
        # minutes), so a slow spell of the machine cannot fall on one side only
        np_budget = 1e9 if ctx.tiny else 5.0 if ctx.quick else 20.0
        np_batches = per_epoch if ctx.tiny else max(5, min(per_epoch, int(np_budget / max(np_step.median, 1e-9))))
        np_xs, np_ys = x[:np_batches * batch], y[:np_batches * batch]

        def numpy_epoch():
            for bx, by in batches(np_xs, np_ys, batch, shuffle=True, seed=0, epoch=0):
                npnet.step(bx, by)

        epochs["numpy"] = numpy_epoch
        ep = _epoch_times(epochs, reps)
        mc_ep, t_ep = _scaled(ep["minicnn"], scale), _scaled(ep.get("torch"), scale)
        np_scale = per_epoch / -(-len(np_xs) // batch)
        np_ep = _scaled(ep["numpy"], np_scale)
        notes = (f"numpy: {np_batches} of {per_epoch} batches timed in the same rounds, scaled x{np_scale:.2f}"
                 if np_scale != 1 else "numpy: the whole epoch, timed in the same rounds")
        if scale != 1:
            notes += f"; minicnn and torch: {n_batches} of {per_epoch} batches timed, scaled x{scale:.2f}"
        c = share[True]
        notes += (f"; minicnn: {c['sparse']} of {c['total']} im2col-path conv backward passes of the last "
                  "timed epoch took the sparse path")
        recs.append(make_record("training", name, "epoch", {"minicnn": mc_ep, "numpy": np_ep, "torch": t_ep},
                                config=f"batch {batch}, {reps} run(s)", shape=f"{len(x):,} images",
                                notes=notes))
        if "minicnn, sparse off" in ep:
            recs.append(make_record("training", f"{name}, sparse backward off", "epoch",
                                    {"minicnn": _scaled(ep["minicnn, sparse off"], scale), "numpy": np_ep,
                                     "torch": t_ep},
                                    config=f"batch {batch}, {reps} run(s)", shape=f"{len(x):,} images",
                                    notes=f"Conv2D.sparse_max_density = 0 (the GEMMs always); "
                                          f"{share[False]['sparse']} sparse passes"))
    return recs, note


def _scaled(st, k):
    if st is None or k == 1:
        return st
    return Stats(st.median * k, st.min * k, [s * k for s in st.samples], st.inner)
