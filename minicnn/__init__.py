"""minicnn: a small, readable and fast CNN training framework on numpy + Numba.

Layers work on NCHW arrays and follow one protocol (``minicnn.layers.base``):
``forward(x) -> y``, ``backward(dout) -> dx``, ``params`` / ``grads`` dicts.
"""
from minicnn import allocator as _allocator
from minicnn import threads as _threads

_threads.configure()  # before numpy and Numba start their pools: see minicnn/threads.py
_allocator.retain_freed_memory()  # no page faults for each step's fresh arrays: minicnn/allocator.py

from minicnn.layers import *  # noqa: F401,F403  (every public layer)
from minicnn.layers import LAYERS, Layer, build_layer
from minicnn.losses import SoftmaxCrossEntropy
from minicnn.model import Input, Model, Sequential, model_from_config
from minicnn.optim import SGD, Adam, OneCycleLR
from minicnn.seeding import manual_seed

__version__ = "0.1.0"
