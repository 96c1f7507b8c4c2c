"""Window pooling kernels: max, max-unpool, average, power-average (LP), mixed.

One import point for the layers (``from minicnn.kernels import pooling as K``).
The kernels live in one small module per pooling type, the conventions they
share (planes, geometry, parallel contract) in :mod:`minicnn.kernels.window`::

    max_pooling     max pooling (general, 2x2, 3x3, 3x3 stride 2), its backward, max unpooling
    avg_pooling     average pooling with PyTorch's divisor rule (general, 2x2, 3x3, 3x3 stride 2)
    lp_pooling      power-average (LP) pooling
    mixed_pooling   a*max + b*avg in one pass, and the combine steps

The private ``_name`` functions are re-exported too: each is the plain
Python reference of the compiled ``name`` (tests build serial versions of
them with ``njit(_name)``).
"""
from minicnn.kernels.window import (  # noqa: F401
    _tap_ranges, _avg_extents, _avg_divisor, _inner_windows, _zero_uncovered_2x2, _add9,
    _window_rows_3x3s2
)
from minicnn.kernels.max_pooling import (  # noqa: F401
    _max_window, _has_nan, _maxpool_plane, _maxpool2d_forward, _max9, _maxpool2d_3x3_forward,
    _first_max3, _maxpool_3x3s2_block, _maxpool2d_3x3s2_forward, maxpool2d_3x3s2_forward,
    _maxpool2d_2x2_forward, _maxpool2d_backward, _maxunpool2d_forward, _maxunpool2d_backward,
    maxpool2d_forward, maxpool2d_2x2_forward, maxpool2d_3x3_forward, maxpool2d_backward,
    maxunpool2d_forward, maxunpool2d_backward
)
from minicnn.kernels.avg_pooling import (  # noqa: F401
    _avgpool2d_forward, _sum9, _avgpool2d_3x3_forward, _avgpool2d_2x2_forward,
    _avgpool2d_backward, _avgpool2d_3x3_backward, _avgpool2d_2x2_backward, avgpool2d_forward,
    avgpool2d_2x2_forward, avgpool2d_3x3_forward, avgpool2d_backward, avgpool2d_2x2_backward,
    avgpool2d_3x3_backward, _avg_divisor_table, _avgpool2d_3x3s2_forward,
    _avgpool2d_3x3s2_backward, avgpool2d_3x3s2_forward, avgpool2d_3x3s2_backward
)
from minicnn.kernels.lp_pooling import (  # noqa: F401
    _power, _root, _lp_window, _lp_window_backward, _lp_sum9, _lppool2d_forward,
    _lppool2d_2x2_forward, _lppool2d_3x3_forward, _lppool2d_backward, _lppool2d_3x3_backward,
    _lppool2d_2x2_backward, lppool2d_forward, lppool2d_2x2_forward, lppool2d_3x3_forward,
    lppool2d_backward, lppool2d_2x2_backward, lppool2d_3x3_backward, _lp_split,
    _lppool2d_3x3s2_forward, lppool2d_3x3s2_forward, _lppool2d_3x3s2_backward,
    lppool2d_3x3s2_backward, _lp_times_power
)
from minicnn.kernels.mixed_pooling import (  # noqa: F401
    _mixedpool2d_3x3_forward, _mixedpool2d_combine, _mixedpool2d_backward_combine,
    mixedpool2d_combine, mixedpool2d_backward_combine, mixedpool2d_3x3_forward
)
