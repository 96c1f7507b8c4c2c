"""One training step and one epoch of ``lenet`` and ``default``, batch 64.

Same work in every column:

* minicnn: ``Trainer.train_step`` (step) and ``Trainer.fit`` for one epoch
  (no progress bar, no evaluation);
* numpy: :class:`benchmarks.references.NumpyNet` (textbook im2col CNN) with
  the same weights and optimiser; its epoch is the first batches of the
  epoch (about 20 s of them; 5 s with ``--quick``), scaled to the whole
  epoch (a real numpy epoch would take minutes);
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

**Epochs in slices** (:func:`interleaved_epochs`).  Each minicnn epoch is
timed in alternation with the numpy and torch epochs, cut into
:data:`SLICES` slices each: after every 1/SLICES of minicnn's steps, one
slice of the numpy batches and one of torch's epoch run, timed apart.
This VM's speed swings by up to 2x for seconds to minutes; with whole
epochs run one after the other (12-30 s each) such a spell could fall on
one of them only (one full run measured minicnn's default epoch at
22.6 s, where a run three minutes later measured 11.9 s and PyTorch's
and numpy's barely moved).  The default model's sparse-off epoch has its
own rounds with the numpy and torch slices, and its row takes its
figures from them.
"""
from __future__ import annotations

import contextlib
import itertools
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


SLICES = 16     # each epoch is timed in this many slices, alternating with the others'


def interleaved_epochs(main, others: dict, every: int, clock=time.perf_counter) -> dict:
    """Time one epoch of ``main`` and of each of ``others`` in slices, in
    alternation, so a slow spell of the machine (this VM's last seconds to
    minutes) falls on all of them alike rather than on one whole epoch.

    ``main(after_step)`` runs its epoch and calls ``after_step()`` after
    each training step (minicnn's ``Trainer.fit``, which cannot be cut from
    outside).  ``others``: ``{name: [slice, ...]}``, functions of no
    arguments that together make that contestant's epoch.  After every
    ``every`` steps of ``main`` the next slice of each of ``others`` runs
    (their order rotating); slices still left when ``main`` ends run then,
    in the same rotation.  -> ``{"main": s, name: s}``: each contestant's
    own wall time; ``main``'s excludes the time spent in the others'
    slices."""
    names = list(others)
    done = {k: 0 for k in names}
    spent = {k: 0.0 for k in names}
    steps = rounds = 0
    away = 0.0                       # time main's clock spent in the others' slices

    def one_round():
        nonlocal rounds, away
        t_away = clock()
        for k in rotation(names, rounds):
            if done[k] < len(others[k]):
                t0 = clock()
                others[k][done[k]]()
                spent[k] += clock() - t0
                done[k] += 1
        rounds += 1
        away += clock() - t_away

    def after_step():
        nonlocal steps
        steps += 1
        if steps % every == 0:
            one_round()

    t0 = clock()
    main(after_step)
    own = clock() - t0 - away
    while any(done[k] < len(others[k]) for k in names):
        one_round()
    return {"main": own, **spent}


def _slices(run_batch, pairs, n_batches, n):
    """The ``n_batches`` batches of the iterator ``pairs`` ((xb, yb) each)
    cut into ``n`` consecutive runs (fewer if there are fewer batches) ->
    functions of no arguments, to be called in order, each drawing its
    run's batches from ``pairs`` and calling ``run_batch(xb, yb)`` on them.
    The batches are drawn inside the slice, so drawing them is timed with
    it, as minicnn's ``Trainer.fit`` draws its own."""
    it = iter(pairs)
    n = max(1, min(n, n_batches))
    bounds = [n_batches * i // n for i in range(n + 1)]

    def part(count):
        def go():
            for xb, yb in itertools.islice(it, count):
                run_batch(xb, yb)
        return go
    return [part(bounds[i + 1] - bounds[i]) for i in range(n)]


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
        ep_count = -(-len(xs) // batch)              # batches in the timed epoch
        scale = per_epoch / ep_count
        log(f"[training] {name} epoch: {n_batches} batches x {reps}")
        share = {}

        def minicnn_epoch(sparse):
            def run_epoch(after_step):
                tr_ep = minicnn_trainer(name, batch=batch, recipe_steps=per_epoch, sparse=sparse)
                step = tr_ep.train_step

                def step_then_pause(*args):
                    out = step(*args)
                    after_step()
                    return out
                tr_ep.train_step = step_then_pause          # Trainer.fit calls self.train_step
                with sparse_backward_count() as counts:
                    tr_ep.fit(xs, ys, 1)
                share[sparse] = counts
            return run_epoch

        # the numpy net trains on the first batches of the same epoch (a whole
        # numpy epoch would take minutes) and is scaled to the whole epoch
        np_budget = 1e9 if ctx.tiny else 5.0 if ctx.quick else 20.0
        np_batches = per_epoch if ctx.tiny else max(5, min(per_epoch, int(np_budget / max(np_step.median, 1e-9))))
        np_xs, np_ys = x[:np_batches * batch], y[:np_batches * batch]
        np_count = -(-len(np_xs) // batch)
        every = max(1, -(-ep_count // SLICES))
        if tstep is not None:
            torch = ctx.torch
            tstep2 = torch_net(torch, build_model(name), name)[1]

            def torch_batch(bx, by):
                tstep2(torch.from_numpy(bx), torch.from_numpy(by))

        def others():
            out = {"numpy": _slices(npnet.step, batches(np_xs, np_ys, batch, shuffle=True, seed=0, epoch=0),
                                    np_count, SLICES)}
            if tstep is not None:
                out["torch"] = _slices(torch_batch, batches(xs, ys, batch, shuffle=True, seed=0, epoch=0),
                                       ep_count, SLICES)
            return out

        # minicnn's epoch (and, for default, the same epoch with the sparse
        # backward off) each in its own alternation with the numpy and torch
        # slices; each row of the report takes its figures from its own rounds
        mains = {"minicnn": True}
        if name == "default":
            mains["minicnn, sparse off"] = False
        samples = {m: {} for m in mains}
        for r in range(reps):
            for m in rotation(list(mains), r):
                got = interleaved_epochs(minicnn_epoch(mains[m]), others(), every)
                for k, v in got.items():
                    samples[m].setdefault(k, []).append(v)
        ep = {m: {k: Stats.from_samples(v) for k, v in by_name.items()} for m, by_name in samples.items()}
        np_scale = per_epoch / np_count

        def row(m):
            e = ep[m]
            return {"minicnn": _scaled(e["main"], scale), "numpy": _scaled(e["numpy"], np_scale),
                    "torch": _scaled(e.get("torch"), scale)}
        notes = (f"numpy: {np_count} of {per_epoch} batches, scaled x{np_scale:.2f}"
                 if np_scale != 1 else "numpy: the whole epoch")
        notes += (f"; each epoch timed in {SLICES} slices alternating with the others' "
                  f"(every {every} minicnn steps)")
        if scale != 1:
            notes += f"; minicnn and torch: {n_batches} of {per_epoch} batches timed, scaled x{scale:.2f}"
        c = share[True]
        notes += (f"; minicnn: {c['sparse']} of {c['total']} im2col-path conv backward passes of the last "
                  "timed epoch took the sparse path")
        recs.append(make_record("training", name, "epoch", row("minicnn"),
                                config=f"batch {batch}, {reps} run(s)", shape=f"{len(x):,} images",
                                notes=notes))
        if "minicnn, sparse off" in ep:
            recs.append(make_record("training", f"{name}, sparse backward off", "epoch",
                                    row("minicnn, sparse off"),
                                    config=f"batch {batch}, {reps} run(s)", shape=f"{len(x):,} images",
                                    notes=f"Conv2D.sparse_max_density = 0 (the GEMMs always); "
                                          f"{share[False]['sparse']} sparse passes; numpy and torch "
                                          f"from this row's own rounds"))
    return recs, note


def _scaled(st, k):
    if st is None or k == 1:
        return st
    return Stats(st.median * k, st.min * k, [s * k for s in st.samples], st.inner)
