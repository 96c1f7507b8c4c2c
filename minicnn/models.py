"""Named models for the CLI (``minicnn train --model NAME``), each with the
training recipe it was measured with.

``default``   conv32-conv64-dense128 with 2x2 max pooling; Adam with a
              one-cycle schedule (the recipe that reaches >= 99 % in 3 epochs).
``lenet``     the small LeNet of the performance issue: conv 1->8, pool,
              conv 8->16, pool, dense 784->10.
``pool_params_nopool`` / ``pool_params_pool``
              the parameter arithmetic example: a 32x32x64 feature map into
              Dense(100) (6,553,700 weights) versus the same after 2x2 pooling
              (16x16x64: 1,638,500).  Input (3, 32, 32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.model import Sequential
from minicnn.seeding import manual_seed


@dataclass(frozen=True)
class Recipe:
    """How a model is trained by default (every field is a CLI flag)."""
    optimizer: str = "adam"
    lr: float = 3e-3           # the peak lr of the one-cycle schedule for Adam
    epochs: int = 3
    batch_size: int = 64
    schedule: str = "onecycle"  # or "constant"


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[], Sequential]
    input_shape: tuple
    description: str
    recipe: Recipe = field(default_factory=Recipe)


def default_model():
    """ReLU comes after each max pooling: the two commute exactly (forward
    and gradients, bit for bit; tests/test_pool_relu_order.py), so this is
    the same network as conv-ReLU-pool, with the ReLUs on 4x fewer values."""
    return Sequential([
        Conv2D(1, 32, 3, padding=1), MaxPool2D(2), ReLU(),     # 32 x 14 x 14
        Conv2D(32, 64, 3, padding=1), MaxPool2D(2), ReLU(),    # 64 x 7 x 7
        Flatten(), Dense(64 * 7 * 7, 128), ReLU(), Dense(128, 10),
    ], input_shape=(1, 28, 28), name="default")


def lenet():
    return Sequential([
        Conv2D(1, 8, 3, padding=1), ReLU(), MaxPool2D(2),      # 8 x 14 x 14
        Conv2D(8, 16, 3, padding=1), ReLU(), MaxPool2D(2),     # 16 x 7 x 7
        Flatten(), Dense(16 * 7 * 7, 10),
    ], input_shape=(1, 28, 28), name="lenet")


def pool_params_nopool():
    return Sequential([Conv2D(3, 64, 3, padding=1), ReLU(), Flatten(), Dense(64 * 32 * 32, 100)],
                      input_shape=(3, 32, 32), name="pool_params_nopool")


def pool_params_pool():
    return Sequential([Conv2D(3, 64, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(64 * 16 * 16, 100)],
                      input_shape=(3, 32, 32), name="pool_params_pool")


MODELS: dict[str, ModelSpec] = {
    "default": ModelSpec(default_model, (1, 28, 28),
                         "conv32-conv64-dense128, 2x2 max pooling (Adam, one-cycle)"),
    "lenet": ModelSpec(lenet, (1, 28, 28), "small LeNet: conv8-conv16-dense10 (SGD)",
                       Recipe(optimizer="sgd", lr=0.05, epochs=3, batch_size=64, schedule="constant")),
    "pool_params_nopool": ModelSpec(pool_params_nopool, (3, 32, 32),
                                    "32x32x64 feature map straight into Dense(100)"),
    "pool_params_pool": ModelSpec(pool_params_pool, (3, 32, 32),
                                  "the same after 2x2 max pooling (16x16x64) into Dense(100)"),
}


def build_model(name: str, seed: int = 0):
    """Build the named model with weights initialised from ``seed``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(MODELS)}")
    manual_seed(seed)
    return MODELS[name].build()
