"""The layer graph: ``Sequential`` chains and branching ``Model`` graphs.

Functional API (for parallel branches that are concatenated, e.g. a
multi-scale pooling head)::

    inp = Input((1, 28, 28))
    h = ReLU()(Conv2D(1, 8, 3, padding=1)(inp))
    out = Concat()(MaxPool2D(2)(h), AvgPool2D(2)(h))
    model = Model(inp, Dense(8 * 14 * 14 * 2, 10)(Flatten()(out)))

Forward visits the nodes in topological order.  Backward visits them in
reverse, and where a node feeds several consumers the upstream gradients
are *summed* (the multivariate chain rule).  ``Sequential`` is the special
case of a chain.

Two exceptions to "layer by layer" (``_Graph.fuse``), both giving the
values and gradients of the graph as written, bit for bit
(docs/pooling.md, "Implementation notes"):

* a ReLU whose output only a MaxPool2D reads runs after that pooling, on
  the pooled values (ReLU and max pooling commute; 4x fewer cells for a
  2x2 pooling);
* backward goes through a Conv2D whose output only a plain 2x2 MaxPool2D
  reads together with that pooling, without storing the full-resolution
  gradient.
"""
from __future__ import annotations

import copy

import numpy as np

from minicnn.layers.base import Layer


class Node:
    """The output of ``layer`` applied to ``inputs`` (other nodes)."""

    def __init__(self, layer: Layer | None, inputs: list["Node"]):
        self.layer = layer
        self.inputs = inputs


class Input(Node):
    """Graph entry point; ``shape`` is (C, H, W) or (features,), no batch."""

    def __init__(self, shape):
        super().__init__(None, [])
        self.shape = tuple(int(s) for s in shape)


class _Graph:
    """What every model provides: forward/backward, params, modes, summary."""

    input_shape: tuple | None = None
    name = "model"

    # ---- the graph as topologically ordered nodes (set by subclasses) ----
    _nodes: list[Node]
    _input: Input
    _output: Node

    def _name_layers(self):
        """Give every layer a unique name, Keras style: a layer left with its
        default name (its class name) becomes ``conv2d``, ``conv2d_1``, ...,
        skipping names chosen explicitly."""
        layers = [n.layer for n in self._nodes[1:]]
        if len({id(l) for l in layers}) != len(layers):
            raise ValueError(f"{self.name}: a layer object is used twice; minicnn layers cache "
                             "their own activations, so create a new layer")
        explicit = [l.name for l in layers if l.name != type(l).__name__]
        dup = sorted({n for n in explicit if explicit.count(n) > 1})
        if dup:
            raise ValueError(f"{self.name}: layer names must be unique, repeated: {dup}")
        taken, counts = set(explicit), {}
        for layer in layers:
            if layer.name != type(layer).__name__:
                continue
            base = type(layer).__name__.lower()
            while True:
                k = counts.get(base, 0)
                counts[base] = k + 1
                name = base if k == 0 else f"{base}_{k}"
                if name not in taken:
                    break
            layer.name = name
            taken.add(name)

    @property
    def layers(self) -> list[Layer]:
        return [n.layer for n in self._nodes[1:]]

    # ------------------------------------------------------------- compute
    #: Run the graph with two exact rewrites (module docstring): each ReLU
    #: that only a MaxPool2D reads goes after that pooling (:meth:`_relu_pool_swaps`),
    #: and each Conv2D whose output only a plain 2x2 MaxPool2D reads goes
    #: back together with it (:meth:`Conv2D.backward_maxpool2x2`, without
    #: writing the full-resolution gradient).  The values and gradients are
    #: those of the graph as written, bit for bit.  Set ``model.fuse =
    #: False`` to run every layer, forward and backward, on its own.  A
    #: forward pass records which rewrites it made (:meth:`_plan`), and the
    #: backward after it follows that record, so toggling ``fuse`` in
    #: between takes effect at the next forward pass.
    fuse = True
    _last_plan: tuple | None = None

    def __getstate__(self):
        """Copies and pickles leave the record out: it is keyed by the
        ``id`` of this graph's nodes, which a copy does not share."""
        state = self.__dict__.copy()
        state.pop("_last_plan", None)
        return state

    def _plan(self) -> tuple:
        """``(swaps, fused)``: :meth:`_relu_pool_swaps` and
        :meth:`_conv_pool_pairs` with :attr:`fuse`, else two empty dicts."""
        if not self.fuse:
            return {}, {}
        swaps = self._relu_pool_swaps()
        return swaps, self._conv_pool_pairs(swaps)

    def _relu_pool_swaps(self) -> dict:
        """{id(pool node): ReLU node} for each ReLU whose output only a
        MaxPool2D reads (and is not the model's output), the pooling having
        no window of padding alone (dilation 1 or no padding) and returning
        no indices.  Such a pair runs as pooling then ReLU: ``max`` over a
        window of ``relu(v)`` is ``relu`` of the window's max, and the
        gradient reaches the same cell (tests/test_pool_relu_order.py).
        The indices are the exception (ties among cells the ReLU zeroed),
        hence the last condition."""
        from minicnn.layers.activations import ReLU
        from minicnn.layers.pooling import MaxPool2D

        readers = self._readers({})
        swaps = {}
        for node in self._nodes[1:]:
            r = readers.get(id(node), [])
            if not (isinstance(node.layer, ReLU) and node is not self._output and len(r) == 1):
                continue
            pool = r[0].layer
            if (isinstance(pool, MaxPool2D) and not pool.return_indices
                    and (pool.dilation == (1, 1) or pool.padding == (0, 0))):
                swaps[id(r[0])] = node
        return swaps

    def _readers(self, swaps: dict) -> dict:
        """{id(node): the nodes that read it}, a swapped pooling reading its
        ReLU's input (and the ReLU read by nobody)."""
        swapped = {id(relu) for relu in swaps.values()}
        readers: dict = {}
        for node in self._nodes[1:]:
            if id(node) in swapped:
                continue
            for i in (swaps[id(node)].inputs if id(node) in swaps else node.inputs):
                readers.setdefault(id(i), []).append(node)
        return readers

    def _conv_pool_pairs(self, swaps: dict | None = None) -> dict:
        """{id(pool node): conv node} for the pairs :attr:`fuse` runs back
        as one (after the ReLU swaps, so conv -> ReLU -> pool qualifies)."""
        from minicnn.layers.conv import Conv2D
        from minicnn.layers.pooling import MaxPool2D

        readers = self._readers(self._relu_pool_swaps() if swaps is None else swaps)
        pairs = {}
        for node in self._nodes[1:]:
            r = readers.get(id(node), [])
            if (isinstance(node.layer, Conv2D) and node is not self._output and len(r) == 1
                    and isinstance(r[0].layer, MaxPool2D) and r[0].layer.is_plain_2x2()):
                pairs[id(r[0])] = node
        return pairs

    def forward(self, x):
        values = {id(self._input): x}
        self._last_plan = self._plan()
        swaps = self._last_plan[0]
        skipped = {id(relu) for relu in swaps.values()}
        try:
            for node in self._nodes[1:]:
                if id(node) in skipped:           # runs after its pooling
                    continue
                relu = swaps.get(id(node))
                inputs = relu.inputs if relu is not None else node.inputs
                y = node.layer.forward(*[values[id(i)] for i in inputs])
                values[id(node)] = relu.layer.forward(y) if relu is not None else y
        except ValueError as e:
            got = tuple(np.shape(x)[1:])
            if self.input_shape is not None and got != self.input_shape:
                raise ValueError(f"{e} [model {self.name!r} was built for input shape "
                                 f"{self.input_shape} (C, H, W); got {got}]") from None
            raise
        return values[id(self._output)]

    def backward(self, dout, input_grad: bool = True):
        """Backpropagate ``dout`` (gradient w.r.t. the output); returns dx.
        Parameter gradients land in each layer's ``grads``.

        ``input_grad=False`` (training: nobody needs the gradient with
        respect to the data) returns None and lets the layers that read
        only the input compute just their parameter gradients
        (:meth:`Layer.backward_params`).  The rewrites are those the last
        forward pass made (:attr:`fuse`): a pooling whose ReLU ran after it
        goes back through that ReLU first, and a Conv2D whose output only a
        plain 2x2 MaxPool2D reads goes back together with it
        (:meth:`Conv2D.backward_maxpool2x2`)."""
        grads = {id(self._output): dout}
        swaps, fused = self._last_plan if self._last_plan is not None else self._plan()
        for node in reversed(self._nodes[1:]):
            g = grads.pop(id(node), None)
            if g is None:  # node does not reach the output, went back with its pool, or is a swapped ReLU
                continue
            inputs = node.inputs
            if id(node) in swaps:             # the ReLU ran after this pooling
                relu = swaps[id(node)]
                g, inputs = relu.layer.backward(g), relu.inputs
            pool = None
            if id(node) in fused:             # node pools a conv's output: both at once
                pool, node = node.layer, fused[id(node)]
                inputs = node.inputs
            params_only = not input_grad and all(i is self._input for i in inputs)
            if pool is not None:
                din = node.layer.backward_maxpool2x2(g, pool, not params_only)
            elif params_only:
                node.layer.backward_params(g)
            else:
                din = node.layer.backward(g)
            if params_only:
                continue
            if len(inputs) == 1:
                din = (din,)
            for inp, d in zip(inputs, din):
                prev = grads.get(id(inp))
                grads[id(inp)] = d if prev is None else prev + d
        return grads.get(id(self._input)) if input_grad else None

    __call__ = forward

    # ------------------------------------------------------------- params
    def parameters(self):
        """(qualified name, param, grad) triples, e.g. ('conv2d.W', W, dW)."""
        return [(f"{layer.name}.{k}", p, layer.grads[k])
                for layer in self.layers for k, p in layer.params.items()]

    def named_params(self):
        return [(n, p) for n, p, _ in self.parameters()]

    def named_grads(self):
        return [(n, g) for n, _, g in self.parameters()]

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def train(self):
        for layer in self.layers:
            layer.train()
        return self

    def eval(self):
        for layer in self.layers:
            layer.eval()
        return self

    @property
    def training(self) -> bool:
        return all(layer.training for layer in self.layers)

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    # ------------------------------------------------------------ summary
    def output_shapes(self, input_shape) -> dict[str, tuple]:
        """Shape (without batch) after every layer, found by running one zero
        sample through a copy of the model in eval mode (the model's own
        caches, e.g. of a pending backward, are left untouched)."""
        probe = copy.deepcopy(self).eval()
        values = {id(probe._input): np.zeros((1,) + tuple(input_shape), np.float32)}
        shapes = {}
        for node in probe._nodes[1:]:
            values[id(node)] = node.layer.forward(*[values[id(i)] for i in node.inputs])
            shapes[node.layer.name] = values[id(node)].shape[1:]
        return shapes

    def summary(self, input_shape=None) -> str:
        """A Keras-style table: layer (type), output shape, parameters,
        (inputs, for branching graphs), then the totals."""
        input_shape = tuple(input_shape or self.input_shape or ())
        if not input_shape:
            raise ValueError(f"{self.name}.summary: give input_shape as (C, H, W)")
        shapes = self.output_shapes(input_shape)
        branching = not isinstance(self, Sequential)
        rows = [("input (Input)", str((None,) + input_shape), "0", "")]
        names = {id(self._input): "input"}
        for node in self._nodes[1:]:
            layer = node.layer
            names[id(node)] = layer.name
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         str((None,) + tuple(shapes[layer.name])),
                         f"{layer.num_params():,}",
                         ", ".join(names[id(i)] for i in node.inputs)))
        header = ("Layer (type)", "Output Shape", "Param #", "Connected to")
        ncol = 4 if branching else 3
        widths = [max(len(r[i]) for r in rows + [header]) + 2 for i in range(ncol)]
        line = lambda r: "".join(c.ljust(w) for c, w in zip(r[:ncol], widths)).rstrip()
        total = self.num_params()
        out = [f'Model: "{self.name}"', "=" * sum(widths), line(header), "=" * sum(widths)]
        out += [line(r) for r in rows]
        out += ["=" * sum(widths), f"Total params: {total:,}", f"Trainable params: {total:,}",
                "Non-trainable params: 0"]
        return "\n".join(out)

    # ------------------------------------------------------- serialisation
    def config(self) -> dict:
        """The architecture as JSON-able data (no weights)."""
        ids = {id(n): k for k, n in enumerate(self._nodes)}
        nodes = [{"class": "Input", "shape": list(self._input.shape)}]
        for node in self._nodes[1:]:
            nodes.append({"class": type(node.layer).__name__, "name": node.layer.name,
                          "config": _jsonable(node.layer.config()),
                          "inputs": [ids[id(i)] for i in node.inputs]})
        return {"class": "Model", "name": self.name, "nodes": nodes, "output": ids[id(self._output)]}


def _jsonable(v):
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _topological(output: Node, inp: Input) -> list[Node]:
    order, state = [], {}

    def visit(node):
        s = state.get(id(node))
        if s == 1:
            raise ValueError("the layer graph has a cycle")
        if s == 2:
            return
        state[id(node)] = 1
        for i in node.inputs:
            visit(i)
        state[id(node)] = 2
        order.append(node)

    visit(output)
    if not order or order[0] is not inp:
        raise ValueError("the model's output does not depend on its Input")
    return order


class Model(_Graph):
    """A branching graph built with the functional API (see module doc)."""

    def __init__(self, inputs: Input, outputs: Node, name: str = "model"):
        if not isinstance(inputs, Input):
            raise TypeError(f"Model: inputs must be an Input node, got {type(inputs).__name__}")
        if not isinstance(outputs, Node):
            raise TypeError(f"Model: outputs must be a Node, got {type(outputs).__name__}")
        self.name = name
        self._input, self._output = inputs, outputs
        self._nodes = _topological(outputs, inputs)
        roots = [n for n in self._nodes if not n.inputs]
        if len(roots) != 1:
            raise ValueError(f"Model {name!r}: exactly one Input is supported, found {len(roots)}")
        self.input_shape = inputs.shape
        self._name_layers()


class Sequential(_Graph):
    """Sequential([layer, ...], input_shape=None): a chain of layers."""

    def __init__(self, layers, input_shape=None, name: str = "sequential"):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a Layer")
        self.name = name
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self._input = Input(self.input_shape or ())
        node: Node = self._input
        for layer in layers:
            node = Node(layer, [node])
        self._output = node
        self._nodes = _topological(node, self._input)
        self._name_layers()

    def config(self) -> dict:
        return {"class": "Sequential", "name": self.name,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "layers": [{"class": type(l).__name__, "name": l.name, "config": _jsonable(l.config())}
                           for l in self.layers]}


def model_from_config(cfg: dict):
    """Rebuild a model from :meth:`config` output.  Only minicnn's own layer
    classes can be named (see ``minicnn.layers.LAYERS``); nothing else is
    imported or executed."""
    from minicnn.layers import build_layer

    if not isinstance(cfg, dict) or cfg.get("class") not in ("Sequential", "Model"):
        raise ValueError(f"model config must be a dict with class 'Sequential' or 'Model', got {cfg!r:.80}")
    try:
        if cfg["class"] == "Sequential":
            layers = [build_layer(l["class"], l.get("config", {}), l.get("name")) for l in cfg["layers"]]
            return Sequential(layers, input_shape=cfg.get("input_shape"), name=cfg.get("name", "sequential"))
        nodes: list[Node] = []
        for k, spec in enumerate(cfg["nodes"]):
            if spec["class"] == "Input":
                if k != 0:
                    raise ValueError("only the first node may be the Input")
                nodes.append(Input(spec["shape"]))
                continue
            inputs = [nodes[i] for i in spec["inputs"] if 0 <= i < k]
            if len(inputs) != len(spec["inputs"]) or not inputs:
                raise ValueError(f"node {k} names inputs {spec['inputs']} that do not precede it")
            nodes.append(Node(build_layer(spec["class"], spec.get("config", {}), spec.get("name")), inputs))
        return Model(nodes[0], nodes[cfg["output"]], name=cfg.get("name", "model"))
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"malformed model config: {type(e).__name__}: {e}") from None
