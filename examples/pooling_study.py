"""The pooling study through the Python API (the same as `minicnn study`).

    python examples/pooling_study.py --quick            # ~5k images, 1 epoch, 1 seed
    python examples/pooling_study.py --seeds 3 --epochs 2 --run-dir runs/full

Trains ten variants of one small CNN (no pooling, max, average, overlapping
max, L2, mixed, stochastic, strided convolution, a global-average-pooling
head and an SPP head) with the same seeds, optimiser, epochs and data order,
then prints a Markdown table and writes report.md, results.json,
results.csv and PNGs into the run folder.  A rerun with the same --run-dir
skips the variants already done.
"""
import argparse
import sys

from minicnn.checkpoint import CheckpointError
from minicnn.cli import number, variant_list
from minicnn.data import MNISTFormatError, MNISTNotFoundError
from minicnn.study import StudyConfig, StudyError, interrupted_message, run_study
from minicnn.train import NonFiniteError, TrainingInterrupted


positive_int = number(int, 1, "a positive integer")     # argparse type for --seeds and --epochs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small subset, 1 epoch, 1 seed")
    p.add_argument("--seeds", type=positive_int, default=None, help="seeds per variant (default 3; quick 1)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 2; quick 1)")
    p.add_argument("--variants", type=variant_list, default=None,
                   help="comma-separated subset, e.g. max,avg,spp")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $MINICNN_DATA, then the cache)")
    args = p.parse_args()

    options = {"seeds": args.seeds, "epochs": args.epochs, "variants": args.variants}
    try:
        if args.quick:
            config = StudyConfig.quick_mode(**options)
        else:
            config = StudyConfig(**{k: v for k, v in options.items() if v is not None})
        run_study(config, run_dir=args.run_dir, data_dir=args.data_dir)
    except (StudyError, MNISTNotFoundError, MNISTFormatError, CheckpointError, NonFiniteError) as e:
        # a --run-dir that is a file or was made with other settings, MNIST missing or
        # damaged: one message and status 1, as `minicnn study` gives
        sys.exit(f"pooling_study.py: {e}")
    except TrainingInterrupted as e:
        print(f"\npooling_study.py: {interrupted_message(e.checkpoint)}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
