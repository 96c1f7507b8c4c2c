"""Every minicnn layer, and the registry that rebuilds layers from JSON.

One concept per file: ``conv``, ``dense``, ``activations``, ``shape``
(Flatten, Concat), ``pooling`` (max/avg/LP/mixed/unpool), ``adaptive``
(adaptive/global/spatial pyramid) and ``random_pooling`` (stochastic,
fractional).
"""
from minicnn.layers.activations import ReLU
from minicnn.layers.adaptive import (AdaptiveAvgPool2D, AdaptiveMaxPool2D, GlobalAvgPool2D,
                                     GlobalMaxPool2D, SpatialPyramidPool2D)
from minicnn.layers.base import Layer
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.pooling import AvgPool2D, LPPool2D, MaxPool2D, MaxUnpool2D, MixedPool2D
from minicnn.layers.random_pooling import FractionalMaxPool2D, StochasticPool2D
from minicnn.layers.shape import Concat, Flatten

LAYERS = {cls.__name__: cls for cls in (
    Conv2D, Dense, ReLU, Flatten, Concat,
    MaxPool2D, AvgPool2D, LPPool2D, MixedPool2D, MaxUnpool2D,
    AdaptiveAvgPool2D, AdaptiveMaxPool2D, GlobalAvgPool2D, GlobalMaxPool2D, SpatialPyramidPool2D,
    StochasticPool2D, FractionalMaxPool2D,
)}


def build_layer(class_name: str, config: dict, name: str | None = None) -> Layer:
    """Construct a layer from its class name and ``config()`` dict.

    Only the classes in ``LAYERS`` can be named, so a saved architecture can
    never import or run anything else.
    """
    cls = LAYERS.get(class_name)
    if cls is None:
        raise ValueError(f"unknown layer class {class_name!r}; known: {', '.join(sorted(LAYERS))}")
    if not isinstance(config, dict):
        raise ValueError(f"{class_name}: config must be a dict, got {type(config).__name__}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(**kwargs, name=name) if name is not None else cls(**kwargs)


__all__ = sorted(LAYERS) + ["Layer", "LAYERS", "build_layer"]
