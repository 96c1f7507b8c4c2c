"""The ten variants of the pooling study: one backbone, ten ways to shrink it.

Backbone (every variant)::

    conv(1->16, 3x3, pad 1) ReLU [down]  conv(16->32, 3x3, pad 1) ReLU [down]  -> head

``[down]`` is the one thing that changes.  With 2x2 downsampling the map
entering the head is 32 x 7 x 7; the *dense head* is the Dense layers after
it: Flatten -> Dense(F, 64) -> ReLU -> Dense(64, 10).

==========  ==============================================  ============  ============
name        [down] / head                                   head input    total params
==========  ==============================================  ============  ============
nopool      nothing; flatten 32*28*28 = 25,088 features     (32, 28, 28)     1,611,146
max         MaxPool2D(2)                                    (32, 7, 7)         105,866
avg         AvgPool2D(2)                                    (32, 7, 7)         105,866
overlap     MaxPool2D(3, stride 2, padding 1)               (32, 7, 7)         105,866
lp2         LPPool2D(p=2, 2)  (L2-norm pooling)             (32, 7, 7)         105,866
mixed       MixedPool2D(2, alpha=0.5, fixed)                (32, 7, 7)         105,866
stochastic  StochasticPool2D(2)                             (32, 7, 7)         105,866
strided     Conv2D(C, C, 3, stride 2, pad 1) + ReLU         (32, 7, 7)         117,434
gap         max 2x2; head GlobalAvgPool2D -> Dense(32, 10)  (32, 7, 7)           5,130
spp         max 2x2 once; head SPP(1,2,4) -> 672 -> 64      (32, 14, 14)        48,522
==========  ==============================================  ============  ============

Choices (documented in the report too):

* **overlap**: kernel 3, stride 2, padding 1 gives 28 -> 14 -> 7, the same
  sizes as 2x2, so only the window overlap differs.
* **mixed**: ``alpha = 0.5`` *fixed* (not learnable), so the variant has
  exactly the pooled variants' parameters and differs from them only in the
  operator: half max, half average.
* **stochastic**: inputs are post-ReLU (non-negative), as the layer needs;
  its sampling generator is seeded with the run's seed; evaluation uses the
  probability-weighted average (Zeiler & Fergus).
* **strided**: each pooling layer is replaced by a *learned* downsampling
  layer Conv2D(C, C, 3, stride 2, padding 1) + ReLU (the All-Convolutional
  Net's recipe).  The two feature convolutions stay exactly as in every other
  variant, so the only change is the downsampling operator, learned instead
  of fixed; the price (11,568 extra parameters and their compute) shows in
  the table.  Making the feature convs themselves stride 2 would also change
  what they compute (1/4 of the positions, at full resolution) and so mix
  two effects.
* **gap**: the max-pooled backbone, then global average pooling: no flatten,
  a 32 -> 10 linear classifier (330 head parameters), the classic GAP head.
  With only 32 channels and no position left it learns slowly (measured:
  ~83 % after 2 epochs on 60k, ~20 % after the quick run's 79 steps); a
  Dense(32, 64) -> ReLU -> Dense(64, 10) head on GAP did not learn faster.
* **spp**: max 2x2 after the first conv only; the spatial pyramid
  (levels 1, 2, 4, max) replaces the second pooling, on the 14 x 14 map, and
  gives 32 * 21 = 672 features for *any* input size >= 8 px, so the same
  model runs on the 24..40 px canvases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from minicnn.layers import (AvgPool2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, LPPool2D,
                            MaxPool2D, MixedPool2D, ReLU, SpatialPyramidPool2D,
                            StochasticPool2D)
from minicnn.model import Sequential
from minicnn.seeding import manual_seed

INPUT_SHAPE = (1, 28, 28)
C1, C2, HIDDEN = 16, 32, 64


@dataclass(frozen=True)
class Variant:
    name: str
    label: str                               # short text for tables and plots
    description: str                         # one line for the report
    down: Callable[[int, int], list]         # (channels, seed) -> the [down] layers
    head: str = "flatten"                    # "flatten" | "gap" | "spp"
    n_down: int = 2                          # [down] after conv 1 (>= 1) and after conv 2 (2)


def _flatten_head(features):
    return [Flatten(), Dense(features, HIDDEN), ReLU(), Dense(HIDDEN, 10)]


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("nopool", "no pooling", "no downsampling; 32x28x28 flattened into the dense head",
            lambda c, s: [], n_down=0),
    Variant("max", "max 2x2", "MaxPool2D(2)", lambda c, s: [MaxPool2D(2)]),
    Variant("avg", "avg 2x2", "AvgPool2D(2)", lambda c, s: [AvgPool2D(2)]),
    Variant("overlap", "max 3x3/2", "overlapping MaxPool2D(3, stride=2, padding=1)",
            lambda c, s: [MaxPool2D(3, 2, padding=1)]),
    Variant("lp2", "L2 (LP p=2)", "LPPool2D(norm_type=2, 2): sqrt of the window's sum of squares",
            lambda c, s: [LPPool2D(2, 2)]),
    Variant("mixed", "mixed a=0.5", "MixedPool2D(2, alpha=0.5), alpha fixed: 0.5 max + 0.5 avg",
            lambda c, s: [MixedPool2D(2, alpha=0.5)]),
    Variant("stochastic", "stochastic", "StochasticPool2D(2), sampled in training, expectation in eval",
            lambda c, s: [StochasticPool2D(2, seed=s)]),
    Variant("strided", "strided conv", "learned Conv2D(C, C, 3, stride=2, padding=1) + ReLU per pooling",
            lambda c, s: [Conv2D(c, c, 3, stride=2, padding=1), ReLU()]),
    Variant("gap", "GAP head", "MaxPool2D(2) backbone; GlobalAvgPool2D -> Dense(32, 10)",
            lambda c, s: [MaxPool2D(2)], head="gap"),
    Variant("spp", "SPP head", "MaxPool2D(2) after conv 1; SPP(1,2,4) max -> Dense(672, 64) -> Dense(64, 10)",
            lambda c, s: [MaxPool2D(2)], head="spp", n_down=1),
]}

POOLED = ("max", "avg", "overlap", "lp2", "mixed", "stochastic")  # the fixed pooling operators


def check_variant_names(names, given: str | None = None) -> None:
    """Raise ValueError for an empty list of variant names or an unknown
    name; the message lists the names to choose from (and quotes ``given``,
    the text the list came from, when there is one)."""
    if not names:
        quoted = f" ({given!r})" if given is not None else ""
        raise ValueError(f"empty list{quoted}; give one or more of: {', '.join(VARIANTS)}")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(str, unknown))}; "
                         f"choose from: {', '.join(VARIANTS)}")


def parse_variant_list(text: str) -> tuple:
    """``"max, avg,spp"`` -> ``("max", "avg", "spp")``: comma-separated
    names, blanks dropped, a repeated name kept once.  Raises ValueError for
    an empty list (``""``, ``","``) or an unknown name
    (:func:`check_variant_names`)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    check_variant_names(names, given=text)
    return tuple(dict.fromkeys(names))


def backbone(v: Variant, seed: int) -> list:
    """conv ReLU [down] conv ReLU [down]: the layers before the head."""
    layers = [Conv2D(1, C1, 3, padding=1), ReLU()]
    if v.n_down >= 1:
        layers += v.down(C1, seed)
    layers += [Conv2D(C1, C2, 3, padding=1), ReLU()]
    if v.n_down >= 2:
        layers += v.down(C2, seed + 1000)   # a second stochastic layer gets its own stream
    return layers


def head_input_shape(v: Variant, input_hw=(28, 28)) -> tuple:
    """(C, H, W) of the feature map entering the head; every [down] here maps
    L -> ceil(L / 2) (28 -> 14 -> 7)."""
    h, w = input_hw
    for _ in range(v.n_down):
        h, w = (h + 1) // 2, (w + 1) // 2
    return (C2, h, w)


def build_variant(name: str, seed: int = 0) -> Sequential:
    """The variant ``name`` with weights from ``manual_seed(seed)``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    manual_seed(seed)
    layers = backbone(v, seed)
    if v.head == "gap":
        layers += [GlobalAvgPool2D(), Dense(C2, 10)]
    elif v.head == "spp":
        spp = SpatialPyramidPool2D((1, 2, 4), mode="max")
        layers += [spp, Dense(C2 * spp.features_per_channel, HIDDEN), ReLU(), Dense(HIDDEN, 10)]
    else:
        _, h, w = head_input_shape(v)
        layers += _flatten_head(C2 * h * w)
    return Sequential(layers, input_shape=INPUT_SHAPE, name=name)


def head_start(model: Sequential) -> int:
    """Index of the first head layer: the one after the last ReLU/pooling of the
    backbone, i.e. the first Flatten / GlobalAvgPool2D / SpatialPyramidPool2D."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (Flatten, GlobalAvgPool2D, SpatialPyramidPool2D)):
            return i
    raise ValueError(f"{model.name}: no head found")


def param_counts(model: Sequential) -> tuple[int, int]:
    """(total parameters, parameters in the Dense layers of the head)."""
    head = model.layers[head_start(model):]
    return model.num_params(), sum(l.num_params() for l in head if isinstance(l, Dense))

