"""Notebook helpers for classifying images: an upload widget, the top-k table, an example image.

Notebook 6 calls these, so it defines no function of its own::

    classifier = Classifier.load(run_dir)
    widgets.classify_widget(classifier)      # upload an image: it and its top-5 chart appear
    widgets.top_k_table(classifier.predict(widgets.example_image(run_dir)))
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd

from workbench._checks import UsageError, check_bool, check_int
from workbench.runs import RunDir


def top_k_table(predictions) -> pd.DataFrame:
    """One image's predictions as a table: rank (the index), label and probability.

    Args:
        predictions: ``Classifier.predict``'s answer for one image, best first.

    Returns:
        A DataFrame with columns ``label`` and ``probability`` indexed by ``rank`` from 1.
    """
    rows = list(predictions)
    if not rows or not all(isinstance(row, dict) and {"label", "probability"} <= set(row)
                           for row in rows):
        raise UsageError(f"predictions must be a non-empty list of dicts with 'label' and "
                         f"'probability', received: {rows!r}"[:300])
    table = pd.DataFrame({"label": [str(row["label"]) for row in rows],
                          "probability": [float(row["probability"]) for row in rows]})
    table.index = pd.RangeIndex(1, len(table) + 1, name="rank")
    return table


def example_image(run_dir: str | Path, *, split: str = "test", index: int = 0) -> Path:
    """An image file from the run's own dataset: the ``index``-th image of ``split``.

    Args:
        run_dir: a run directory written by ``finetune`` (its ``config.json`` names the split
            folder, whose ``split.json`` names the dataset folder).
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: which image of the split, in ``splits.csv`` order.

    Returns:
        The path of the image file.

    Raises:
        FileNotFoundError: the run, its split folder or the image is missing.
        ValueError: the split has no image ``index``.
    """
    return RunDir(run_dir).example_image(split=split, index=index)


def classify_widget(classifier, *, top_k: int = 5, explain: bool = False):
    """A file-upload widget that shows each uploaded image beside its top-k chart and table.

    Args:
        classifier: a :class:`workbench.deploy.predict.Classifier`.
        top_k: how many classes to show.
        explain: also show where the model looked for its top class (Grad-CAM, from the run's
            Keras model: ``Classifier.explain``).

    Returns:
        An ``ipywidgets.VBox`` holding the ``FileUpload`` (``.children[0]``) and the ``Output``
        the results go to (``.children[1]``); a file that is not a usable image shows the
        reason instead.
    """
    import ipywidgets

    check_int("top_k", top_k, minimum=1)
    check_bool("explain", explain)
    upload = ipywidgets.FileUpload(accept="image/*", multiple=False,
                                   description="Upload image")
    output = ipywidgets.Output()

    def on_upload(change) -> None:
        if change["new"]:
            output.outputs = classify_outputs(classifier, change["new"][-1], top_k=top_k,
                                              explain=explain)

    upload.observe(on_upload, names="value")
    return ipywidgets.VBox([upload, output])


def classify_outputs(classifier, uploaded: dict, *, top_k: int = 5,
                     explain: bool = False) -> tuple:
    """The notebook outputs for one uploaded file: the chart and the table (and with
    ``explain`` the photo beside its Grad-CAM map), or the error.

    Args:
        classifier: a :class:`workbench.deploy.predict.Classifier`.
        uploaded: one entry of ``FileUpload.value`` (``name`` and ``content``).
        top_k: how many classes to show.
        explain: add where the model looked for its top class (``Classifier.explain``).

    Returns:
        A tuple of Jupyter output dicts for ``ipywidgets.Output.outputs``.
    """
    from workbench.data.images import ImageRejected, open_image
    from workbench.plots import top_k_chart

    data = bytes(uploaded["content"])
    name = uploaded.get("name", "upload")
    try:
        predictions = classifier.predict(data, top_k=top_k)
    except ImageRejected as error:
        return ({"output_type": "stream", "name": "stderr",
                 "text": f"{name}: not a usable image ({error})\n"},)
    figure = top_k_chart(predictions, image=open_image(data),
                         title=f"{name}: top-{len(predictions)}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    table = top_k_table(predictions)
    shown = (
        {"output_type": "display_data", "metadata": {},
         "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                  "text/plain": f"<top-{len(predictions)} chart of {name}>"}},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/html": table.to_html(float_format="{:.4f}".format),
                  "text/plain": table.to_string()}},
    )
    if not explain:
        return shown
    explained = classifier.explain(data, label=predictions[0]["label"])
    explained.probability = float(predictions[0]["probability"])  # as the chart shows it
    buffer = io.BytesIO()
    explained.plot().savefig(buffer, format="png", dpi=90)
    return shown + ({"output_type": "display_data", "metadata": {},
                     "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                              "text/plain": f"<where the model looked in {name}>"}},)
