"""Classifying new images: every input type, the training preprocessing, bad input, the CLI."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tiny_data
from workbench.cli import main
from workbench.data.images import ImageRejected
from workbench.evaluate import evaluate
from workbench.finetune.solver import SolverConfig
from workbench.finetune.train import finetune
from workbench.predict import Classifier


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    splits = tiny_data.write_splits(root, per_class=8, counts=(4, "rest", 2))
    finetune(splits, root / "run", backbone="lenet", weights=None, recipe="scratch",
             image_size=16, solver=SolverConfig(epochs=2, batch_size=8), progress="none")
    return {"run": root / "run", "data": root / "data"}


@pytest.fixture(scope="module")
def classifier(run):
    return Classifier.load(run["run"])


def test_every_input_type_gives_the_same_answer(run, classifier):
    path = next((run["data"] / "3").glob("*.png"))
    expected = classifier.predict(path)
    assert len(expected) == 5 and [e["label"] for e in expected] != []
    probabilities = [e["probability"] for e in expected]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    image = Image.open(path)
    for other in (str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), image,
                  np.asarray(image.convert("RGB"))):
        assert classifier.predict(other) == expected
    for top in classifier.predict([path, path]):  # a batch: same labels, floats to the last bits
        assert [e["label"] for e in top] == [e["label"] for e in expected]
        assert [e["probability"] for e in top] == pytest.approx(probabilities, rel=1e-5)


def test_predictions_match_the_evaluation_of_the_same_images(run, classifier):
    report = evaluate(run["run"], split="test")
    table = pd.read_csv(run["run"] / "evaluation" / "test" / "predictions.csv")
    assert len(table) == len(report.predictions)
    for _, row in table.head(5).iterrows():
        top = classifier.predict(run["data"] / row["path"], top_k=1)[0]
        assert str(top["label"]) == str(row["label_1"])
        assert top["probability"] == pytest.approx(row["probability_1"], rel=1e-4)


def test_top_k_is_clipped_to_the_classes(run, classifier):
    path = next((run["data"] / "0").glob("*.png"))
    assert len(classifier.predict(path, top_k=50)) == 10


def test_garbage_is_rejected_not_predicted(classifier, tmp_path):
    with pytest.raises(ImageRejected, match="not an image"):
        classifier.predict(b"this is not an image")
    truncated = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, "JPEG")
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        classifier.predict(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    with pytest.raises(TypeError, match="source must be"):
        classifier.predict([3.5])
    with pytest.raises(ValueError, match="top_k must be >= 1, received: 0"):
        classifier.predict(b"x", top_k=0)


def test_cli_prints_a_table_or_json_lines_and_survives_a_bad_file(run, tmp_path, capsys):
    path = str(next((run["data"] / "5").glob("*.png")))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["predict", str(run["run"]), path, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == path and lines[1].lstrip().startswith("1. ") and len(lines) == 4
    assert main(["predict", str(run["run"]), path, str(bad), "--json"]) == 1
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["image"] == path and len(first["predictions"]) == 5
    assert second["image"] == str(bad) and "not an image" in second["error"]
