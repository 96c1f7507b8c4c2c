"""One place for the random state that initialises weights.

``manual_seed(s)`` makes every later layer initialisation reproducible, like
``torch.manual_seed``.  Layers draw from :func:`generator`; data shuffling
and stochastic layers carry their own seeded generators.
"""
import numpy as np

_GENERATOR = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the weight-initialisation generator to ``seed``."""
    global _GENERATOR
    _GENERATOR = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    """The generator layers use to initialise their weights."""
    return _GENERATOR
