"""The curated top-level API: one call per step, imported on first use."""

import subprocess
import sys

import pytest

import workbench


def test_importing_workbench_imports_nothing_heavy():
    code = ("import sys, workbench; heavy = {'keras', 'tensorflow', 'pandas', 'PIL'} & "
            "set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_step_is_the_library_function():
    from workbench.data.split import prepare
    from workbench.deploy.export import export
    from workbench.deploy.predict import Classifier
    from workbench.deploy.serve import serve
    from workbench.evaluation import evaluate
    from workbench.studies.sweep import sweep
    from workbench.training.train import finetune

    assert (workbench.prepare, workbench.finetune, workbench.evaluate, workbench.Classifier,
            workbench.export, workbench.serve, workbench.sweep) == (
        prepare, finetune, evaluate, Classifier, export, serve, sweep)
    assert {"prepare", "finetune", "Classifier"} <= set(dir(workbench))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fine_tune'"):
        workbench.fine_tune  # noqa: B018
