"""Does pretraining on the sample ``source`` task help on the sample ``target`` task?

Pretrains a small CNN on the rendered letters (``workbench.data.sample.make_source``), then, for
several seeds, trains on a few images per class of the hard digits
(``workbench.data.sample.make_target``) and measures accuracy on a fixed held-out test set:

* scratch: the same network, randomly initialised, every layer trained (batch norm updating);
* feature extraction: the pretrained backbone frozen, a new head trained;
* fine-tuned: the feature-extraction model, then the whole network at a low rate
  (batch norm kept in inference mode, as the Keras fine-tuning guide advises).

Prints a table (mean +- std over seeds) and writes it to ``benchmarks/results/transfer_task.md``.

    .venv/bin/python benchmarks/transfer_task.py                 # the defaults, ~3-4 min on 2 cores
    .venv/bin/python benchmarks/transfer_task.py --target-seed 1  # another clutter for the target
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transfer_task.md"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", default="cifar_cnn", choices=("cifar_cnn", "lenet"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--source-per-class", type=int, default=300,
                        help="rendered images per letter (26 letters); 10%% are held out")
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument("--source-lr", type=float, default=3e-3)
    parser.add_argument("--target-train-per-class", type=int, default=5)
    parser.add_argument("--test-per-class", type=int, default=50,
                        help="fixed held-out target test images per digit")
    parser.add_argument("--target-epochs", type=int, default=60,
                        help="epochs of the new head of the transfer variants")
    parser.add_argument("--finetune-epochs", type=int, default=30,
                        help="further epochs of the whole network for the fine-tuned variant")
    parser.add_argument("--target-lr", type=float, default=3e-3,
                        help="Adam rate for scratch and for the new head")
    parser.add_argument("--finetune-lr", type=float, default=1e-4,
                        help="Adam rate for the whole network in the fine-tuned variant")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the source renders")
    parser.add_argument("--target-seed", type=int, default=0, help="seed of the target clutter")
    parser.add_argument("--source-model", type=Path, default=None,
                        help="a .keras file: loaded if it exists (pretraining skipped), else "
                             "the pretrained source model is saved there")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the table")
    return parser.parse_args(argv)


def stratified_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``per_class`` random items of each label, skipping ``exclude``."""
    allowed = np.ones(len(labels), bool)
    if exclude is not None:
        allowed[exclude] = False
    picked = []
    for label in np.unique(labels):
        candidates = np.flatnonzero((labels == label) & allowed)
        if len(candidates) < per_class:
            raise ValueError(f"only {len(candidates)} images of class {label} left, "
                             f"need {per_class}")
        picked.append(rng.choice(candidates, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def load_backbone(path: Path):
    """The pretrained backbone of the saved source model."""
    from workbench import models

    return models.load_source(path)


def pretrain(args, workdir: Path) -> dict:
    import keras

    from workbench import models
    from workbench.data.sample import make_source

    start = time.monotonic()
    x, y, names = make_source(args.source_per_class, image_size=args.image_size,
                              seed=args.data_seed, progress="auto")
    render_s = time.monotonic() - start
    held_out = stratified_pick(y, max(1, args.source_per_class // 10),
                               np.random.default_rng(1234))
    train = np.setdiff1d(np.arange(len(y)), held_out)
    keras.utils.set_random_seed(args.data_seed)
    shape = (args.image_size, args.image_size, 3)
    model = models.classifier(models.backbone(args.backbone, input_shape=shape), len(names),
                              train_bn=True)
    steps = args.source_epochs * int(np.ceil(len(train) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(args.source_lr, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    path = args.source_model or workdir / "source.keras"
    start = time.monotonic()
    if args.source_model is not None and args.source_model.is_file():
        model = keras.models.load_model(path)
        train_s = float("nan")
    else:
        model.fit(x[train], y[train], batch_size=32, epochs=args.source_epochs, verbose=2)
        train_s = time.monotonic() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    _, accuracy = model.evaluate(x[held_out], y[held_out], verbose=0)
    return {"path": path, "accuracy": accuracy, "render_s": render_s, "train_s": train_s,
            "classes": len(names), "train": len(train), "held_out": len(held_out)}


def run_target(args, source_path: Path) -> dict[str, list[float]]:
    import keras

    from workbench import models
    from workbench.data.sample import make_target

    x, y, names = make_target(image_size=args.image_size, seed=args.target_seed, progress="auto")
    # The test set is fixed (its own generator), whatever the training seeds.
    test = stratified_pick(y, args.test_per_class, np.random.default_rng(4321))
    shape = (args.image_size, args.image_size, 3)
    results = {"scratch": [], "feature extraction": [], "fine-tuned": []}
    for seed in range(args.seeds):
        train = stratified_pick(y, args.target_train_per_class, np.random.default_rng(seed),
                                exclude=test)
        xt, yt = x[train], y[train]
        batch = min(32, len(train))

        def fit_and_score(model, lr, epochs):
            model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.fit(xt, yt, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
            return model.evaluate(x[test], y[test], verbose=0)[1]

        keras.utils.set_random_seed(seed)
        scratch = models.classifier(models.backbone(args.backbone, input_shape=shape),
                                    len(names), train_bn=True)
        # Scratch gets as many epochs as the fine-tuned variant has in all.
        results["scratch"].append(fit_and_score(scratch, args.target_lr,
                                                args.target_epochs + args.finetune_epochs))

        keras.utils.set_random_seed(seed)
        features = load_backbone(source_path)
        features.trainable = False
        transfer = models.classifier(features, len(names), train_bn=False)
        results["feature extraction"].append(
            fit_and_score(transfer, args.target_lr, args.target_epochs))

        features.trainable = True
        # Batch norm must stay in inference mode. models.classifier(train_bn=False) passes
        # training=False to the backbone, but under Keras 3 an outer fit() call still runs it
        # in training mode (measured: outputs differ), which wrecked fine-tuning; a batch-norm
        # layer with trainable=False always runs in inference mode.
        for layer in features.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        results["fine-tuned"].append(
            fit_and_score(transfer, args.finetune_lr, args.finetune_epochs))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()),
              file=sys.stderr, flush=True)
    return results


def table(args, source: dict, results: dict[str, list[float]]) -> str:
    n = args.target_train_per_class
    trained = (f"loaded from {args.source_model}" if source["train_s"] != source["train_s"]
               else f"{source['train_s']:.0f} s")  # NaN: the source model was loaded
    lines = [
        "# Transfer task: rendered letters (source) -> cluttered real digits (target)",
        "",
        f"Backbone `{args.backbone}`, {args.image_size}x{args.image_size} RGB. Source: "
        f"{source['classes']} letters x {args.source_per_class} renders (data seed "
        f"{args.data_seed}), {args.source_epochs} epochs Adam {args.source_lr:g} cosine, "
        f"batch 32: rendering {source['render_s']:.0f} s, training {trained}; "
        f"**source held-out accuracy {source['accuracy']:.3f}** ({source['held_out']} images).",
        "",
        f"Target: {n} train images per digit (sampled per seed), fixed test set of "
        f"{10 * args.test_per_class} ({args.test_per_class} per digit), target clutter seed "
        f"{args.target_seed}. Batch {min(32, 10 * n)}. Scratch: "
        f"{args.target_epochs + args.finetune_epochs} epochs Adam {args.target_lr:g}, batch norm "
        f"training. Feature extraction: frozen backbone, new head {args.target_epochs} epochs "
        f"Adam {args.target_lr:g}. Fine-tuned: that model, then {args.finetune_epochs} epochs of "
        f"the whole network (batch norm frozen) at {args.finetune_lr:g}. "
        f"Seeds 0..{args.seeds - 1}.",
        "",
        "| variant | test accuracy (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    for name, values in results.items():
        values = np.asarray(values)
        per_seed = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {values.mean():.3f} ± {values.std():.3f} | {per_seed} |")
    lines.append(f"| (chance) | {0.1:.3f} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        source = pretrain(args, Path(workdir))
        results = run_target(args, source["path"])
    text = table(args, source, results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
