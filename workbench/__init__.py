"""workbench: a notebook-first transfer-learning workbench on TensorFlow and Keras 3.

The workflow, one call a step (each imported on first use, so ``import workbench`` is instant)::

    import workbench

    workbench.prepare("photos/", "runs/splits", counts=(10, 10, "rest"))   # scan + split
    run = workbench.finetune("runs/splits", "runs/flowers", start="mobilenet_v2")
    report = workbench.evaluate("runs/flowers")                  # top-1/top-5, confusion
    workbench.Classifier.load("runs/flowers").predict("photo.jpg")
    workbench.export("runs/flowers", format="litert")            # phones and servers
    workbench.serve("runs/flowers")                              # the phone page
    workbench.sweep("notebooks/03_fine_tune.ipynb", "runs/sweep", {"seeds": [0, 1, 2]})

Everything else lives in the subpackages: ``workbench.data`` (scan, split, pipeline),
``workbench.training`` (lr_mult, solver, recipes, callbacks), ``workbench.inspect``,
``workbench.monitor``, ``workbench.plots``, ``workbench.deploy`` and ``workbench.studies``.
"""

import importlib

__version__ = "0.1.0"

# name -> (module, attribute): the curated API, imported lazily
_API = {
    "prepare": ("workbench.data.split", "prepare"),
    "finetune": ("workbench.training.train", "finetune"),
    "StartingPoint": ("workbench.models", "StartingPoint"),
    "evaluate": ("workbench.evaluation", "evaluate"),
    "Classifier": ("workbench.deploy.predict", "Classifier"),
    "export": ("workbench.deploy.export", "export"),
    "serve": ("workbench.deploy.serve", "serve"),
    "sweep": ("workbench.studies.sweep", "sweep"),
}

__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
