"""Checkpoints: round trip, atomic writes, validation, and never unpickling."""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

import minicnn as mc
from minicnn import checkpoint
from minicnn.checkpoint import CheckpointError


def model(seed=0):
    mc.manual_seed(seed)
    return mc.Sequential([mc.Conv2D(1, 4, 3, padding=1), mc.ReLU(), mc.MaxPool2D(2),
                          mc.Flatten(), mc.Dense(4 * 4 * 4, 10)], input_shape=(1, 8, 8), name="tiny")


def branching(seed=0):
    mc.manual_seed(seed)
    inp = mc.Input((1, 8, 8))
    h = mc.Conv2D(1, 2, 3, padding=1)(inp)
    out = mc.Concat()(mc.MaxPool2D(2)(h), mc.AvgPool2D(2)(h))
    return mc.Model(inp, mc.Dense(4 * 16, 3)(mc.Flatten()(out)), name="branchy")


@pytest.mark.parametrize("build", [model, branching])
def test_round_trip_restores_architecture_weights_and_outputs(tmp_path, build):
    m1 = build(1)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, m1, extra={"note": "hi"})
    m2, meta, optim = checkpoint.load(path)
    assert meta["version"] == checkpoint.VERSION and meta["extra"] == {"note": "hi"}
    assert m2.config() == m1.config()
    assert np.array_equal(m1.forward(x), m2.forward(x))
    assert optim == {}


def test_optimizer_state_round_trip(tmp_path):
    m1 = model()
    opt = mc.Adam(m1.parameters(), lr=1e-3)
    for g in [g for _, _, g in opt.parameters]:
        g[...] = 0.5
    opt.step()
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, m1, opt)
    m2, _, arrays = checkpoint.load(path)
    opt2 = mc.Adam(m2.parameters(), lr=1e-3)
    opt2.load_state_arrays(arrays)
    assert opt2.steps == 1
    for name, st in opt.state.items():
        for k, v in st.items():
            assert np.array_equal(v, opt2.state[name][k])


def test_float64_model_round_trips_in_float64(tmp_path):
    m1 = model().astype(np.float64)
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, m1)
    m2, _, _ = checkpoint.load(path)
    assert all(p.dtype == np.float64 for _, p in m2.named_params())


def test_save_is_atomic_old_file_survives_a_failed_write(tmp_path, monkeypatch):
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model(1))
    before = open(path, "rb").read()

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, model(2))
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"], "a temporary file was left behind"


class _Exploit:
    """Unpickling this would create a marker file: proof that code ran."""
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_in_npz_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    good = tmp_path / "good.npz"
    checkpoint.save(str(good), model())
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    obj = np.empty(1, dtype=object)
    obj[0] = _Exploit()
    arrays["param/conv2d.W"] = obj
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)                   # numpy pickles the object array
    with pytest.raises(CheckpointError, match="pickled"):
        checkpoint.load(str(bad))
    assert not marker.exists(), "loading the checkpoint executed code"


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    path = tmp_path / "m.npz"
    checkpoint.save(str(path), model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m\.npz.*(truncated|corrupt)"):
        checkpoint.load(str(path))


def test_corrupt_bytes_get_a_clear_error(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match=r"m\.npz"):
        checkpoint.load(str(path))


def _rewrite(path, mutate):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    mutate(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    open(path, "wb").write(buf.getvalue())


def _meta(arrays):
    return json.loads(arrays["__meta__"].tobytes().decode())


def _set_meta(arrays, meta):
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def test_shape_mismatch_is_named(tmp_path):
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model())
    _rewrite(path, lambda a: a.__setitem__("param/dense.W", np.zeros((3, 3), np.float32)))
    with pytest.raises(CheckpointError, match=r"dense\.W has shape \(3, 3\).*needs \(64, 10\)"):
        checkpoint.load(path)


def test_missing_parameter_is_named(tmp_path):
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model())
    _rewrite(path, lambda a: a.pop("param/dense.b"))
    with pytest.raises(CheckpointError, match=r"missing \['dense\.b'\]"):
        checkpoint.load(path)


def test_unsupported_version_and_foreign_files(tmp_path):
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model())

    def bump(a):
        meta = _meta(a)
        meta["version"] = 99
        _set_meta(a, meta)
    _rewrite(path, bump)
    with pytest.raises(CheckpointError, match="version 99"):
        checkpoint.load(path)
    plain = str(tmp_path / "plain.npz")
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minicnn checkpoint"):
        checkpoint.load(plain)


def test_architecture_cannot_name_arbitrary_classes(tmp_path):
    path = str(tmp_path / "m.npz")
    checkpoint.save(path, model())

    def evil(a):
        meta = _meta(a)
        meta["architecture"]["layers"][0]["class"] = "os.system"
        _set_meta(a, meta)
    _rewrite(path, evil)
    with pytest.raises(CheckpointError, match="unknown layer class 'os.system'"):
        checkpoint.load(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        checkpoint.load(str(tmp_path / "nope.npz"))


def test_checkpoint_is_a_plain_zip_of_npy_files(tmp_path):
    path = tmp_path / "m.npz"
    checkpoint.save(str(path), model())
    names = zipfile.ZipFile(path).namelist()
    assert "__meta__.npy" in names and "param/conv2d.W.npy" in names


def _zip_with(path, members):
    """An .npz-like zip of raw members ``{name: bytes}``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_malformed_files_raise_checkpoint_error_naming_the_file(tmp_path):
    """Each of these escaped as a TypeError, AttributeError, TokenError or
    KeyError before (an audit with crafted files)."""
    good = str(tmp_path / "good.npz")
    checkpoint.save(good, model())
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}

    cases = {}
    npy = tmp_path / "single.npz"                     # a .npy file under an .npz name
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    cases[npy] = "a single .npy array, not an .npz archive"
    raw = tmp_path / "raw_member.npz"                 # a member without the .npy suffix
    _zip_with(raw, {**members, "param/dense.b": b"\x00" * 40})
    cases[raw] = r"entries \['param/dense\.b'\] are not \.npy arrays"
    header = tmp_path / "bad_header.npz"              # a damaged .npy header
    broken = bytearray(members["param/dense.b.npy"])
    broken[10:40] = b"{'descr': '<f4', 'shape': ((("
    _zip_with(header, {**members, "param/dense.b.npy": bytes(broken)})
    cases[header] = "not a readable .npz file|not a readable array"
    for path, why in cases.items():
        with pytest.raises(CheckpointError, match=rf"checkpoint {path}: ({why})"):
            checkpoint.load(str(path))

    for name, mutate, why in (
            ("no_arch", lambda m: m.pop("architecture"), "needs an 'architecture' object"),
            ("extra_list", lambda m: m.__setitem__("extra", [1]), "needs an 'architecture' object"),
            ("version_true", lambda m: m.__setitem__("version", True), "format version True")):
        path = str(tmp_path / f"{name}.npz")
        checkpoint.save(path, model())

        def edit(a, mutate=mutate):
            meta = _meta(a)
            mutate(meta)
            _set_meta(a, meta)
        _rewrite(path, edit)
        with pytest.raises(CheckpointError, match=why):
            checkpoint.load(path)


def test_an_architecture_too_large_for_memory_is_refused(tmp_path):
    path = str(tmp_path / "huge.npz")
    checkpoint.save(path, mc.Sequential([mc.Dense(2, 2)], name="small"))

    def grow(a):
        meta = _meta(a)
        meta["architecture"]["layers"][0]["config"] = {"in_features": 10 ** 6, "out_features": 10 ** 6}
        _set_meta(a, meta)
    _rewrite(path, grow)
    with pytest.raises(CheckpointError, match="declares 1,000,001,000,000 parameter values, the file holds 6"):
        checkpoint.load(path)
    for n in (3000, 6000):      # 9M values: built, the stored shape named; 36M: refused unbuilt
        checkpoint.save(path, mc.Sequential([mc.Dense(2, 2)], name="small"))

        def resize(a, n=n):
            meta = _meta(a)
            meta["architecture"]["layers"][0]["config"] = {"in_features": n, "out_features": n}
            _set_meta(a, meta)
        _rewrite(path, resize)
        why = "has shape" if n * n + n <= 6 + checkpoint.ALLOCATION_SLACK else "declares"
        with pytest.raises(CheckpointError, match=why):
            checkpoint.load(path)


def test_param_shapes_are_the_shapes_a_layer_builds():
    """``Layer.param_shapes(**config)`` (what load checks before building)
    against the parameters each layer really holds."""
    for layer in (mc.Dense(3, 5), mc.Conv2D(2, 4, (3, 2), stride=2, padding=1), mc.Conv2D(1, 1, 1),
                  mc.MixedPool2D(2, learnable=True), mc.MixedPool2D(2), mc.MaxPool2D(2), mc.ReLU()):
        want = {k: v.shape for k, v in layer.params.items()}
        assert type(layer).param_shapes(**layer.config()) == want, layer


def test_written_files_get_the_usual_mode(tmp_path):
    """mkstemp makes files 0600; a checkpoint gets what open() would give
    under the current umask."""
    path = tmp_path / "m.npz"
    old = os.umask(0o022)
    try:
        checkpoint.save(str(path), model())
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
