"""The layer protocol every minicnn layer follows.

A layer is a small object with

* ``forward(x) -> y`` that caches only what ``backward`` needs, by
  reference where it can: Dense, Conv2D (for its backward, which forms
  the im2col columns again when a batch was cut into chunks, or reads the
  input channels-last for its sparse path),
  LPPool2D and StochasticPool2D in eval mode keep the input array itself,
  LPPool2D its output ``y`` too, and MaxUnpool2D the ``indices`` it was
  given (as int64: the caller's array when it already is).  An array
  changed in place between forward and backward changes the gradient
  (PyTorch counts versions and raises then; minicnn does not).  Indices a
  layer returns (``return_indices``) are a copy, the caller's to change,
* ``backward(dout) -> dx`` that never mutates ``dout`` and stores parameter
  gradients in ``self.grads`` (same keys as ``self.params``),
* ``params`` / ``grads`` dicts of numpy arrays,
* ``training`` flag switched by ``train()`` / ``eval()``,
* ``config()`` returning the constructor keyword arguments as JSON-able
  values, so a model's architecture can be saved as JSON and rebuilt
  (see :func:`minicnn.layers.registry.build_layer`).

Data flows one way: a layer never reaches into another layer.

Input dtype rule (documented once, here): layers compute in float32 or
float64.  A layer with parameters casts its input to its parameter dtype.
A layer without parameters keeps float32/float64 input as is and casts
any other real input (bool, integers, float16) to float32.  Complex,
object and string arrays raise ``TypeError``, as input and as
``backward``'s upstream gradient ``dout``.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def flag(layer: str, name: str, value) -> bool:
    """A layer's True/False option: ``bool`` or ``numpy.bool_``, else a
    TypeError naming the layer and the option."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


class Layer:
    """Base class: parameter bookkeeping, mode switches, input checks."""

    def __init__(self, name: str | None = None):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self.name = name or type(self).__name__

    # ------------------------------------------------------------------ API
    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def param_shapes(**config) -> dict:
        """The shapes of the parameters a layer built with ``config`` (its
        constructor arguments) would hold, without building it: none for
        layers without parameters.  Used to check a saved architecture
        against the arrays stored with it before anything is allocated."""
        return {}

    def backward_params(self, dout):
        """Only the parameter gradients (into ``self.grads``); no input gradient.

        A model calls this on the layers that read its input directly when
        nobody wants the gradient with respect to the data (training), so
        a first convolution skips its ``col2im``.  The default runs the full
        ``backward`` and drops ``dx``; layers with a cheaper path override it.
        """
        self.backward(dout)

    def __call__(self, *inputs, **kwargs):
        """``layer(node)`` wires the layer into a functional graph
        (see :mod:`minicnn.model`); ``layer(array, ...)`` runs ``forward``
        with the same arguments, keywords included."""
        from minicnn.model import Node  # local import: model imports layers

        if inputs and all(isinstance(i, Node) for i in inputs):
            if kwargs:
                raise TypeError(f"{self.name}: keyword arguments cannot be wired into a graph node")
            return Node(self, list(inputs))
        return self.forward(*inputs, **kwargs)

    def config(self) -> dict:
        """Constructor keyword arguments, JSON-able (override per layer)."""
        return {}

    # ------------------------------------------------------- mode and dtype
    def train(self):
        self.training = True
        return self

    def eval(self):
        self.training = False
        return self

    def astype(self, dtype):
        """Cast parameters and gradients in place to ``dtype`` (float32/64)."""
        dtype = np.dtype(dtype)
        if dtype.type not in FLOAT_DTYPES:
            raise TypeError(f"{self.name}: dtype must be float32 or float64, got {dtype}")
        for k in self.params:
            self.params[k] = self.params[k].astype(dtype)
            self.grads[k] = np.zeros_like(self.params[k])
        self._dtype = dtype
        return self

    @property
    def dtype(self):
        """The dtype this layer computes in (float32 unless cast)."""
        if self.params:
            return next(iter(self.params.values())).dtype
        return getattr(self, "_dtype", np.dtype(np.float32))

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    # ----------------------------------------------------------- checking
    def _as_input(self, x, ndim: int | tuple[int, ...], what: str = "x"):
        """Validate rank/dtype of ``x`` and return it as a float array.

        Raises ValueError naming this layer when the rank is wrong and
        TypeError for non-real dtypes.  See the module docstring for the
        dtype rule.
        """
        if not isinstance(x, np.ndarray):
            if isinstance(x, (list, tuple)) or np.isscalar(x):
                x = np.asarray(x)
            else:
                raise TypeError(f"{self.name}: expected a numpy array for {what}, got {type(x).__name__}")
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in ranks:
            want = " or ".join(f"{r}-D" for r in ranks)
            raise ValueError(f"{self.name}: expected {want} input {what}, got shape {x.shape} ({x.ndim}-D)")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}: expected a real-valued array for {what}, got dtype {x.dtype}")
        if self.params:
            target = self.dtype
        elif x.dtype.type in FLOAT_DTYPES:
            return x
        else:
            target = np.dtype(np.float32)
        return x if x.dtype == target else x.astype(target)

    def _check_dout(self, dout, shape):
        """Check that an upstream gradient is a real-valued array (the dtype
        rule of ``forward``'s input: TypeError otherwise) of the forward
        output's shape (ValueError otherwise)."""
        dout = np.asarray(dout)
        if dout.dtype.kind not in "biuf":
            raise TypeError(f"{self.name}.backward: expected a real-valued dout, got dtype {dout.dtype}")
        if dout.shape != tuple(shape):
            raise ValueError(f"{self.name}.backward: expected dout of shape {tuple(shape)}, got {dout.shape}")
        return dout

    def _need_forward(self, attr: str):
        if getattr(self, attr, None) is None:
            raise RuntimeError(f"{self.name}.backward called before forward")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
