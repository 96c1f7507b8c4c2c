"""Why pooling shrinks the dense head: the parameter arithmetic.

    python examples/param_count.py

A 32x32x64 feature map flattened into Dense(100) needs
32*32*64*100 + 100 = 6,553,700 parameters; after 2x2 pooling (16x16x64) it
needs 16*16*64*100 + 100 = 1,638,500: four times fewer, because the map has
four times fewer cells.  Same models as `minicnn summary --model
pool_params_nopool` / `--model pool_params_pool`.
"""
from minicnn.models import build_model


def main():
    dense = {}
    for name in ("pool_params_nopool", "pool_params_pool"):
        model = build_model(name)
        print(model.summary())
        print()
        dense[name] = model.layers[-1].num_params()    # the Dense(…, 100) at the end
    a, b = dense["pool_params_nopool"], dense["pool_params_pool"]
    print(f"Dense(100) after the 32x32x64 map:     {a:>11,} parameters")
    print(f"Dense(100) after 2x2 pooling, 16x16x64: {b:>10,} parameters")
    print(f"ratio: {a / b:.2f} (2x2 pooling keeps 1 cell in 4)")


if __name__ == "__main__":
    main()
