"""The pooling study: what pooling does, measured on MNIST.

Ten variants of one small backbone (:mod:`minicnn.study.variants`) are
trained with the same seeds, optimiser, epochs and data order, then
measured: parameters (total and in the dense head), the feature-map shape
entering the head, test accuracy (mean ± std over seeds), training seconds
per epoch, inference ms per batch, and translation robustness
(:mod:`minicnn.study.robustness`); the SPP-head model is also run on 24..40
pixel canvases.  :mod:`minicnn.study.report` writes ``report.md``,
``results.json`` and ``results.csv``; :mod:`minicnn.study.plots` the PNGs.

    from minicnn.study import StudyConfig, run_study
    run_study(StudyConfig.quick_mode(), run_dir="runs/quick")

or ``minicnn study --quick``.
"""
from minicnn.study.robustness import (BACKGROUND, DIRECTIONS, DISTANCES, all_shifts, shift_images,
                                      shift_robustness, to_canvas)
from minicnn.study.runner import StudyConfig, StudyError, interrupted_message, run_study
from minicnn.study.variants import VARIANTS, build_variant, param_counts

__all__ = ["BACKGROUND", "DIRECTIONS", "DISTANCES", "VARIANTS", "StudyConfig", "StudyError",
           "all_shifts", "build_variant", "interrupted_message", "param_counts", "run_study", "shift_images",
           "shift_robustness", "to_canvas"]
