"""Window geometry shared by every convolution and pooling layer.

The output-size formula lives here, once.  It follows PyTorch's documented
rule for ``Conv2d`` / ``MaxPool2d`` / ``AvgPool2d``::

    eff   = d * (k - 1) + 1                          # effective kernel
    out   = floor((L + 2p - eff + (s - 1 if ceil_mode else 0)) / s) + 1
    if ceil_mode and (out - 1) * s >= L + p:  out -= 1

The last line drops a window that would *start* in the right padding
(or beyond), as PyTorch does.
"""
from __future__ import annotations

import numbers


def pair(value, name: str, layer: str) -> tuple[int, int]:
    """Turn ``int`` or ``(h, w)`` into an ``(h, w)`` tuple of ints.

    Raises TypeError naming ``layer`` and ``name`` for anything else.
    """
    if isinstance(value, bool):
        raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")


def output_size(length: int, kernel: int, stride: int, padding: int = 0,
                dilation: int = 1, ceil_mode: bool = False) -> int:
    """Number of windows along one axis (PyTorch's formula, see module doc).

    May return a value < 1; callers turn that into a ValueError that names
    the layer (see :func:`check_window`).
    """
    eff = dilation * (kernel - 1) + 1
    num = length + 2 * padding - eff
    if ceil_mode:
        out = -(-num // stride) + 1          # ceil division
        if (out - 1) * stride >= length + padding:
            out -= 1
    else:
        out = num // stride + 1
    return out


def check_window(layer: str, kernel, stride, padding, dilation=(1, 1),
                 max_padding: str = "half") -> None:
    """Validate window hyper-parameters, each an (h, w) pair.

    ``max_padding="half"`` enforces PyTorch's pooling rule
    ``padding <= effective_kernel // 2``; ``None`` only requires >= 0.
    Raises ValueError naming the layer, the parameter and its value.
    """
    for name, v in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(v) <= 0:
            raise ValueError(f"{layer}: {name} must be > 0, got {v}")
    if min(padding) < 0:
        raise ValueError(f"{layer}: padding must be >= 0, got {padding}")
    if max_padding == "half":
        eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        if any(p > e // 2 for p, e in zip(padding, eff)):
            raise ValueError(
                f"{layer}: padding should be at most half of the effective kernel size, "
                f"got padding={padding} for effective kernel {eff} "
                f"(kernel_size={kernel}, dilation={dilation})")


def window_output_shape(layer: str, hw: tuple[int, int], kernel, stride, padding,
                        dilation=(1, 1), ceil_mode: bool = False) -> tuple[int, int]:
    """(H_out, W_out) for input (H, W); ValueError naming ``layer`` if < 1."""
    out = tuple(output_size(L, k, s, p, d, ceil_mode)
                for L, k, s, p, d in zip(hw, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"{layer}: input spatial size {tuple(hw)} is too small for kernel_size={kernel}, "
            f"stride={stride}, padding={padding}, dilation={dilation}: output would be {out}")
    return out
