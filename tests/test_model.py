"""Sequential and functional Model: chaining, fan-out gradients, naming, parameters,
modes, summary, config round trips and model-level errors."""
import json

import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import check_gradients, tie_free
from minicnn.layers import Concat, Conv2D, Dense, Flatten, ReLU
from minicnn.model import Input, Model, Sequential, model_from_config


def _chain(seed):
    minicnn.manual_seed(seed)
    return [Conv2D(2, 3, 3, padding=1), ReLU(), Conv2D(3, 4, 3, stride=2), ReLU(),
            Flatten(), Dense(4 * 2 * 2, 5)]


def _fanout(seed=2):
    """inp -> conv -> h;  h -> conv1x1 -> a;  h -> relu -> b;  concat(a, b) -> flatten -> dense."""
    minicnn.manual_seed(seed)
    inp = Input((2, 4, 4))
    h = Conv2D(2, 3, 3, padding=1)(inp)
    a = Conv2D(3, 2, 1)(h)
    b = ReLU()(h)
    c = Concat()(a, b)
    out = Dense(5 * 4 * 4, 3)(Flatten()(c))
    return Model(inp, out, name="fanout")


# ------------------------------------------------------------------- Sequential
def test_sequential_equals_manual_chaining():
    rng = np.random.default_rng(0)
    model = Sequential(_chain(0))
    manual = _chain(0)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = model.forward(x)
    ref = x
    for layer in manual:
        ref = layer.forward(ref)
    np.testing.assert_array_equal(y, ref)
    assert y.shape == (2, 5)

    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dout)
    d = dout
    for layer in reversed(manual):
        d = layer.backward(d)
    np.testing.assert_array_equal(dx, d)
    for layer, ref_layer in zip(model.layers, manual):
        for k in layer.grads:
            np.testing.assert_array_equal(layer.grads[k], ref_layer.grads[k])
    np.testing.assert_array_equal(model(x), y)          # __call__ is forward


def test_sequential_gradcheck():
    model = Sequential(_chain(1), input_shape=(2, 6, 6))
    x = tie_free((1, 2, 6, 6), np.random.default_rng(1))
    result = check_gradients(model, x)
    assert result.passed, result.errors
    assert set(result.errors) == {"x", "conv2d.W", "conv2d.b", "conv2d_1.W", "conv2d_1.b", "dense.W", "dense.b"}


# ------------------------------------------------------------ fan-out graph
def test_fanout_gradcheck():
    model = _fanout()
    x = tie_free((2, 2, 4, 4), np.random.default_rng(3))
    model.astype(np.float64)
    h = model.layers[0].forward(x)
    assert np.abs(h).min() > 1e-3          # no ReLU input near its kink: the check is meaningful
    result = check_gradients(model, x)
    assert result.passed, result.errors
    assert len(result.errors) == 1 + 2 * 3


def test_fanout_backward_sums_both_branches():
    """dL/dh = (conv1x1 branch) + (relu branch), derived by hand."""
    rng = np.random.default_rng(4)
    model = _fanout().astype(np.float64)
    conv, conv1, relu, cat, flat, dense = model.layers
    assert [type(l) for l in model.layers] == [Conv2D, Conv2D, ReLU, Concat, Flatten, Dense]
    x = rng.standard_normal((2, 2, 4, 4))
    y = model.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = model.backward(dout)

    h = conv.forward(x)
    a = conv1.forward(h)
    b = relu.forward(h)
    # by hand: dense -> flatten -> split the concat -> each branch -> sum
    dc = (dout @ dense.params["W"].T).reshape(2, 5, 4, 4)
    da, db = dc[:, :2], dc[:, 2:]
    W1 = conv1.params["W"][:, :, 0, 0]                      # (2, 3): a 1x1 conv is a channel mix
    dh_conv = np.einsum("nfhw,fc->nchw", da, W1)
    dh_relu = db * (h > 0)
    dh = dh_conv + dh_relu
    # the conv's bias gradient saw the sum (db = sum of dh over n, h, w)
    np.testing.assert_allclose(conv.grads["b"], dh.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)
    dx_hand = conv.backward(dh)                             # conv itself is tested elsewhere
    np.testing.assert_allclose(dx, dx_hand, rtol=1e-12, atol=1e-12)
    # negative controls: either branch alone is not the answer
    assert not np.allclose(dx, conv.backward(dh_conv))
    assert not np.allclose(dx, conv.backward(dh_relu))
    assert a.shape == (2, 2, 4, 4) and b.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("build", ["sequential", "fanout", "two_readers"])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(build):
    """Training calls ``backward(dout, input_grad=False)``: the layers reading
    the input compute only dW and db (a first conv skips col2im).  Every
    parameter gradient must equal the full backward's, bit for bit."""
    rng = np.random.default_rng(5)
    minicnn.manual_seed(5)
    if build == "sequential":
        model = Sequential([Conv2D(2, 3, 3, padding=1), ReLU(), Flatten(), Dense(3 * 4 * 4, 4)])
    elif build == "fanout":
        model = _fanout()
    else:   # two layers read the input itself, one of them has no parameters
        inp = Input((2, 4, 4))
        cat = Concat()(Conv2D(2, 3, 3, padding=1)(inp), ReLU()(inp))
        model = Model(inp, Dense(5 * 4 * 4, 4)(Flatten()(cat)))
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    dout = rng.standard_normal(model.forward(x).shape).astype(np.float32)
    assert model.backward(dout) is not None
    full = {name: g.copy() for name, _, g in model.parameters()}
    for _, _, g in model.parameters():
        g[...] = np.nan                      # every gradient must be written again
    assert model.backward(dout, input_grad=False) is None
    for name, _, g in model.parameters():
        np.testing.assert_array_equal(g, full[name], err_msg=name)


def test_conv_backward_params_skips_only_dx():
    rng = np.random.default_rng(6)
    conv = Conv2D(2, 3, 3, padding=1)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    dout = rng.standard_normal(conv.forward(x).shape).astype(np.float32)
    conv.backward(dout)
    dW, db = conv.grads["W"].copy(), conv.grads["b"].copy()
    conv.grads["W"][...] = 0
    conv.grads["b"][...] = 0
    assert conv.backward_params(dout) is None
    np.testing.assert_array_equal(conv.grads["W"], dW)
    np.testing.assert_array_equal(conv.grads["b"], db)
    assert np.abs(dW).sum() > 0


def test_same_node_twice_into_concat():
    minicnn.manual_seed(0)
    inp = Input((3,))
    h = Dense(3, 2)(inp)
    model = Model(inp, Concat()(h, h))
    model.astype(np.float64)
    x = np.random.default_rng(0).standard_normal((4, 3))
    y = model.forward(x)
    np.testing.assert_array_equal(y[:, :2], y[:, 2:])
    dout = np.random.default_rng(1).standard_normal((4, 4))
    dx = model.backward(dout)
    W = model.layers[0].params["W"]
    np.testing.assert_allclose(dx, (dout[:, :2] + dout[:, 2:]) @ W.T, rtol=1e-12)
    assert check_gradients(model, x).passed


# -------------------------------------------------------------------- naming
def test_keras_style_unique_names():
    model = Sequential(_chain(0))
    assert [l.name for l in model.layers] == ["conv2d", "relu", "conv2d_1", "relu_1", "flatten", "dense"]
    model = Sequential([Dense(3, 3, name="first"), ReLU(), Dense(3, 3), ReLU(name="act")])
    assert [l.name for l in model.layers] == ["first", "relu", "dense", "act"]
    assert [l.name for l in _fanout().layers] == ["conv2d", "conv2d_1", "relu", "concat", "flatten", "dense"]


def test_duplicate_explicit_names_rejected():
    with pytest.raises(ValueError, match=r"unique.*'fc'"):
        Sequential([Dense(3, 3, name="fc"), Dense(3, 3, name="fc")])


def test_reusing_a_layer_object_rejected():
    relu = ReLU()
    with pytest.raises(ValueError, match="used twice"):
        Sequential([Dense(3, 3), relu, Dense(3, 3), relu])
    inp = Input((3,))
    dense = Dense(3, 3)
    with pytest.raises(ValueError, match="used twice"):
        Model(inp, dense(dense(inp)))


def test_sequential_rejects_non_layers():
    with pytest.raises(TypeError, match="item 1"):
        Sequential([ReLU(), "relu"])
    with pytest.raises(ValueError, match="at least one layer"):
        Sequential([])


# -------------------------------------------------------- parameters and modes
def test_parameters_names_and_identity():
    model = Sequential(_chain(0))
    names = [n for n, _, _ in model.parameters()]
    assert names == ["conv2d.W", "conv2d.b", "conv2d_1.W", "conv2d_1.b", "dense.W", "dense.b"]
    conv = model.layers[0]
    _, p, g = model.parameters()[0]
    assert p is conv.params["W"] and g is conv.grads["W"]       # optimisers update in place
    assert [n for n, _ in model.named_params()] == names
    assert [n for n, _ in model.named_grads()] == names


def test_num_params():
    model = Sequential(_chain(0))
    assert model.num_params() == (2 * 3 * 9 + 3) + (3 * 4 * 9 + 4) + (16 * 5 + 5) == 254
    assert _fanout().num_params() == (2 * 3 * 9 + 3) + (3 * 2 + 2) + (80 * 3 + 3)


def test_train_eval_propagate():
    model = _fanout()
    assert model.training and all(l.training for l in model.layers)
    assert model.eval() is model
    assert not model.training and not any(l.training for l in model.layers)
    model.train()
    assert all(l.training for l in model.layers)


def test_zero_grad():
    model = Sequential(_chain(0))
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    model.backward(np.ones(model.forward(x).shape))
    assert any(np.any(g != 0) for _, _, g in model.parameters())
    model.zero_grad()
    assert all(np.all(g == 0) for _, _, g in model.parameters())


# -------------------------------------------------------------------- summary
def _rows(text):
    """Table rows as lists of cells (cells are separated by 2+ spaces)."""
    import re
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def test_summary_exact_numbers():
    model = Sequential([Conv2D(1, 8, 3, padding=1), ReLU(), Flatten(), Dense(8 * 6 * 6, 10)],
                       input_shape=(1, 6, 6), name="small")
    model.train()
    text = model.summary()
    rows = _rows(text)
    assert rows[0] == ['Model: "small"']
    assert ["Layer (type)", "Output Shape", "Param #"] in rows
    body = [r for r in rows if len(r) == 3 and r[0] != "Layer (type)"]
    assert body == [
        ["input (Input)", "(None, 1, 6, 6)", "0"],
        ["conv2d (Conv2D)", "(None, 8, 6, 6)", "80"],
        ["relu (ReLU)", "(None, 8, 6, 6)", "0"],
        ["flatten (Flatten)", "(None, 288)", "0"],
        ["dense (Dense)", "(None, 10)", "2,890"],
    ]
    assert "Total params: 2,970" in text.splitlines()
    assert "Trainable params: 2,970" in text.splitlines()
    assert model.num_params() == 2970
    assert model.training                                   # summary left the mode alone
    assert model.summary((1, 6, 6)) == text


def test_summary_runs_in_eval_mode_and_restores_modes():
    class ModeSpy(ReLU):
        seen = []

        def forward(self, x):
            ModeSpy.seen.append(self.training)
            return super().forward(x)

    spy = ModeSpy()
    model = Sequential([Dense(3, 2), spy], input_shape=(3,))
    model.summary()
    assert ModeSpy.seen == [False]
    assert model.training and spy.training
    model.eval()
    model.summary()
    assert not model.training and not spy.training


def test_summary_needs_a_shape_and_shows_connections():
    model = Sequential([ReLU()])
    with pytest.raises(ValueError, match="input_shape"):
        model.summary()
    text = _fanout().summary()
    rows = _rows(text)
    assert ["Layer (type)", "Output Shape", "Param #", "Connected to"] in rows
    assert ["concat (Concat)", "(None, 5, 4, 4)", "0", "conv2d_1, relu"] in rows
    assert ["relu (ReLU)", "(None, 3, 4, 4)", "0", "conv2d"] in rows
    assert f"Total params: {_fanout().num_params():,}" in text


# ------------------------------------------------------------ config round trip
def _copy_weights(src, dst):
    for (n1, p1), (n2, p2) in zip(src.named_params(), dst.named_params()):
        assert n1 == n2 and p1.shape == p2.shape
        p2[...] = p1


@pytest.mark.parametrize("build", [lambda: Sequential(_chain(0), input_shape=(2, 6, 6), name="seq"),
                                   lambda: _fanout()])
def test_config_round_trip(build):
    model = build()
    cfg = json.loads(json.dumps(model.config()))          # really JSON
    minicnn.manual_seed(99)
    rebuilt = model_from_config(cfg)
    assert type(rebuilt) is type(model) and rebuilt.name == model.name
    assert rebuilt.config() == cfg
    assert [type(l) for l in rebuilt.layers] == [type(l) for l in model.layers]
    assert [l.name for l in rebuilt.layers] == [l.name for l in model.layers]
    assert [l.config() for l in rebuilt.layers] == [l.config() for l in model.layers]
    x = np.random.default_rng(5).standard_normal((2,) + model.input_shape).astype(np.float32)
    assert not np.array_equal(rebuilt.forward(x), model.forward(x))    # fresh weights differ
    _copy_weights(model, rebuilt)
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))


@pytest.mark.parametrize("evil", ["Lambda", "os.system", "builtins.eval", "__import__", "Layer",
                                  "Model", "Sequential", "Input", "Node", "object"])
def test_model_from_config_rejects_unknown_classes(evil):
    cfg = Sequential([Dense(2, 2), ReLU()]).config()
    cfg["layers"][1]["class"] = evil
    with pytest.raises(ValueError, match="unknown layer class"):
        model_from_config(cfg)
    cfg = _fanout().config()
    cfg["nodes"][2]["class"] = evil
    with pytest.raises(ValueError):
        model_from_config(cfg)


def test_model_from_config_rejects_malformed():
    with pytest.raises(ValueError, match="Sequential"):
        model_from_config({"class": "os.system", "layers": []})
    with pytest.raises(ValueError):
        model_from_config("Sequential")
    cfg = Sequential([Dense(2, 2)]).config()
    cfg["layers"][0]["config"]["__class__"] = "x"               # unexpected keyword
    with pytest.raises(ValueError, match="malformed"):
        model_from_config(cfg)
    cfg = _fanout().config()
    cfg["nodes"][1]["inputs"] = [3]                              # not a preceding node
    with pytest.raises(ValueError, match="do not precede"):
        model_from_config(cfg)
    cfg = _fanout().config()
    del cfg["nodes"]
    with pytest.raises(ValueError, match="malformed"):
        model_from_config(cfg)


# ------------------------------------------------------------- model errors
def test_model_error_mentions_built_for_shape():
    model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), Flatten(), Dense(4 * 28 * 28, 10)],
                       input_shape=(1, 28, 28), name="mnist")
    assert model.forward(np.zeros((2, 1, 28, 28))).shape == (2, 10)
    with pytest.raises(ValueError) as e:
        model.forward(np.zeros((2, 1, 32, 32)))
    msg = str(e.value)
    assert "(1, 28, 28)" in msg and "(1, 32, 32)" in msg and "mnist" in msg
    assert "dense" in msg                                     # the failing layer's own message is kept
    with pytest.raises(ValueError, match=r"(?s)expected 1 input channels.*built for input shape \(1, 28, 28\)"):
        model.forward(np.zeros((2, 3, 28, 28)))


def test_model_graph_errors():
    with pytest.raises(TypeError, match="Input"):
        Model(Dense(2, 2), Input((2,)))
    inp, other = Input((2,)), Input((2,))
    with pytest.raises(ValueError, match="does not depend"):
        Model(inp, Dense(2, 2)(other))


def test_summary_between_forward_and_backward_leaves_caches_alone():
    minicnn.manual_seed(0)
    model = minicnn.Sequential([minicnn.Conv2D(1, 2, 3, padding=1), minicnn.ReLU(), minicnn.Flatten(), minicnn.Dense(2 * 16, 3)],
                          input_shape=(1, 4, 4))
    x = np.random.default_rng(0).standard_normal((5, 1, 4, 4)).astype(np.float32)
    y = model.forward(x)
    model.summary()
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape


def test_explicit_name_does_not_block_automatic_names():
    model = minicnn.Sequential([minicnn.Conv2D(1, 1, 1), minicnn.Conv2D(1, 1, 1, name="conv2d"), minicnn.Conv2D(1, 1, 1)])
    assert [l.name for l in model.layers] == ["conv2d_1", "conv2d", "conv2d_2"]
