"""Train the default minicnn model on MNIST through the Python API.

    python examples/train_mnist.py [--epochs 3] [--data-dir DIR] [--limit-train N]

The same as `minicnn train`, spelled out: data -> model -> loss ->
backward -> optimiser, with a one-cycle Adam schedule.  The model is written
in the textbook order (ReLU, then pooling); `minicnn train`'s default model
pools first, which is the same network bit for bit with less work (see
docs/pooling.md, "ReLU and max pooling commute").
"""
import argparse
import sys

import minicnn as mc
from minicnn.cli import number
from minicnn.data import MNISTFormatError, MNISTNotFoundError, ensure_mnist, load_mnist
from minicnn.download import DownloadError
from minicnn.train import Trainer, evaluate


_positive_int = number(int, 1, "a positive integer")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=_positive_int, default=3, help="epochs (default 3)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $MINICNN_DATA, then the cache)")
    p.add_argument("--limit-train", type=_positive_int, default=None, help="use the first N training images")
    args = p.parse_args()

    try:
        folder = ensure_mnist(args.data_dir, download=True)
        x_train, y_train = load_mnist(folder, "train", limit=args.limit_train)
        x_test, y_test = load_mnist(folder, "test")
    except (MNISTNotFoundError, MNISTFormatError, DownloadError) as e:
        sys.exit(f"train_mnist.py: {e}")

    mc.manual_seed(0)
    model = mc.Sequential([
        mc.Conv2D(1, 32, 3, padding=1), mc.ReLU(), mc.MaxPool2D(2),   # -> 32 x 14 x 14
        mc.Conv2D(32, 64, 3, padding=1), mc.ReLU(), mc.MaxPool2D(2),  # -> 64 x 7 x 7
        mc.Flatten(), mc.Dense(64 * 7 * 7, 128), mc.ReLU(), mc.Dense(128, 10),
    ], input_shape=(1, 28, 28))
    print(model.summary())

    batch_size = 64
    optimizer = mc.Adam(model.parameters(), lr=3e-3)
    steps = args.epochs * -(-len(x_train) // batch_size)
    schedule = mc.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)

    trainer = Trainer(model, optimizer, batch_size=batch_size, seed=0, scheduler=schedule)
    for epoch in trainer.fit(x_train, y_train, args.epochs, x_test, y_test):
        print(f"epoch {epoch['epoch']}: loss {epoch['train_loss']:.4f}, "
              f"test accuracy {epoch['test_accuracy']:.4f} ({epoch['seconds']:.1f} s)")
    _, accuracy = evaluate(model, x_test, y_test)
    print(f"test accuracy: {100 * accuracy:.2f} %")


if __name__ == "__main__":
    main()
