"""Notebook 6's library side: the top-k chart, the table, the example image and the widget."""

import base64
import datetime
import io

import numpy as np
import pytest
from PIL import Image

from serving import digit
from workbench import plots
from workbench.deploy import widgets

NOW = datetime.datetime.now(datetime.timezone.utc)  # FileUpload's last_modified
PREDICTIONS = [{"label": "tulip", "probability": 0.7}, {"label": "rose", "probability": 0.2},
               {"label": "daisy", "probability": 0.1}]


def test_top_k_chart_draws_one_bar_per_class_best_on_top():
    figure = plots.top_k_chart(PREDICTIONS)
    ax = figure.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([70, 20, 10])
    ticks = {tick.get_text(): tick.get_position()[1] for tick in ax.get_yticklabels()}
    assert [ticks[name] for name in ("tulip", "rose", "daisy")] == [0, 1, 2]
    assert ax.yaxis_inverted()  # row 0, the best, on top
    assert [text.get_text() for text in ax.texts] == ["70.0%", "20.0%", "10.0%"]
    assert ax.get_title() == "Top-3"


def test_top_k_chart_shows_the_image_beside_the_bars():
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :15] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    for image in (pixels, Image.open(buffer)):  # an array or a PIL image, decoded
        figure = plots.top_k_chart(PREDICTIONS, image=image)
        picture, bars = figure.axes
        assert np.array_equal(picture.images[0].get_array(), pixels)
        assert len(bars.patches) == 3
    with pytest.raises(ValueError, match="image needs a figure of its own"):
        plots.top_k_chart(PREDICTIONS, image=pixels, ax=figure.axes[1])
    with pytest.raises(ValueError, match="received: \\[\\]"):
        plots.top_k_chart([])
    with pytest.raises(ValueError, match="'label' and 'probability'"):
        plots.top_k_chart([{"label": "x"}])


def test_top_k_table_ranks_from_one():
    table = widgets.top_k_table(PREDICTIONS)
    assert list(table.index) == [1, 2, 3] and table.index.name == "rank"
    assert list(table["label"]) == ["tulip", "rose", "daisy"]
    with pytest.raises(ValueError, match="non-empty list"):
        widgets.top_k_table([])


def test_example_image_is_a_file_of_the_runs_test_split(served_run):  # noqa: F811
    import pandas as pd

    path = widgets.example_image(served_run.run)
    table = pd.read_csv(served_run.run.parent / "splits" / "splits.csv", dtype=str)
    first_test = table.loc[table["split"] == "test", "path"].iloc[0]
    assert path == (served_run.data / first_test).resolve() and path.is_file()
    assert widgets.example_image(served_run.run, split="train", index=3).is_file()
    with pytest.raises(ValueError, match="index must be below the 20 images of split 'test'"):
        widgets.example_image(served_run.run, index=20)
    with pytest.raises(FileNotFoundError, match="run_dir must be a run directory"):
        widgets.example_image(served_run.data)


def test_uploading_into_the_widget_shows_the_chart_and_table(served_run):  # noqa: F811
    box = widgets.classify_widget(served_run.classifier, top_k=3)
    upload, output = box.children
    data = digit(served_run, 9)
    upload.value = ({"name": "nine.png", "type": "image/png", "size": len(data),
                     "content": memoryview(data), "last_modified": NOW},)
    chart, table = output.outputs
    png = base64.b64decode(chart["data"]["image/png"])
    assert Image.open(io.BytesIO(png)).format == "PNG"
    expected = served_run.classifier.predict(data, top_k=3)
    html = table["data"]["text/html"]
    positions = [html.index(f"<td>{entry['label']}</td>") for entry in expected]
    assert positions == sorted(positions) and f"{expected[0]['probability']:.4f}" in html

    upload.value = ({"name": "notes.png", "type": "image/png", "size": 5,
                     "content": memoryview(b"notes"), "last_modified": NOW},)
    (error,) = output.outputs  # replaces the last result
    assert error["name"] == "stderr" and "notes.png: not a usable image" in error["text"]
    assert "not an image" in error["text"]
