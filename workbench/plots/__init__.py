"""Every figure the workbench draws: a leaf that takes arrays and frames, never paths.

Each function returns a ``matplotlib.figure.Figure`` and never shows it through pyplot:
notebooks display what they get, scripts save it. Where it draws follows one rule:

* a plot of **one panel** (one Axes, perhaps with a twin axis or a colour bar) takes
  ``ax=None``: it draws into the given ``Axes``, else into a new figure's only Axes, and
  returns ``ax.figure``: class_counts, confusion_figure, reliability_diagram, mosaic,
  gradient_check, compare_accuracy, sweep_results, throughput, split_profile, split_latency,
  bottleneck_accuracy;
* a plot of **several panels** takes ``figure=None``: it draws into the given empty ``Figure``
  or ``SubFigure`` (``fig.subfigures(1, 2)`` puts two such plots side by side), else into a new
  figure, and returns that figure: image_grid, samples_per_class, filter_comparison,
  activation_panels, weight_stats, training_curves, batch_size_study, resource_dashboard;
* a plot that draws one panel or several by its options takes both, ``ax`` for the one panel
  and ``figure`` for either (never both): explanation (``beside=False``: the blend alone),
  top_k_chart (with ``image``: the image beside the bars).

Panels are never drawn into an Axes handed in for one: a grid needs room that an Axes does not
have, and a figure keeps the panels' shared layout (``layout="constrained"``). A given figure
keeps its own size; ``figsize`` and such apply to new ones. Reading files
is the caller's job (``workbench.runs.RunDir(path)``: its ``history``, ``resources`` and
``weight_stats``; ``workbench.monitor.read_resources(path)`` of a monitor's CSV,
``workbench.data.scan.sample_images(...)``); this package imports nothing else of the
workbench but ``workbench._checks``.

=========================  ===================================================================
:mod:`.data`               class_counts, image_grid, samples_per_class
:mod:`.training`           training_curves, compare_accuracy
:mod:`.resources`          resource_dashboard
:mod:`.evaluation`         confusion_figure, top_k_chart, reliability_diagram
:mod:`.inspection`         mosaic, filter_comparison, activation_panels, weight_stats,
                           gradient_check
:mod:`.explain`            explanation (a photo beside its heatmap)
:mod:`.studies`            sweep_results, batch_size_study, throughput, split_profile,
                           split_latency, bottleneck_accuracy
=========================  ===================================================================
"""

from workbench.plots.data import class_counts, image_grid, samples_per_class
from workbench.plots.evaluation import confusion_figure, reliability_diagram, top_k_chart
from workbench.plots.explain import explanation
from workbench.plots.inspection import (activation_panels, filter_comparison, gradient_check,
                                        mosaic, weight_stats)
from workbench.plots.resources import resource_dashboard
from workbench.plots.studies import (batch_size_study, bottleneck_accuracy, split_latency,
                                     split_profile, sweep_results, throughput)
from workbench.plots.training import compare_accuracy, training_curves

__all__ = [
    "activation_panels", "batch_size_study", "bottleneck_accuracy", "class_counts",
    "compare_accuracy", "confusion_figure", "explanation", "filter_comparison", "gradient_check",
    "image_grid", "mosaic", "resource_dashboard", "samples_per_class", "split_latency", "split_profile",
    "reliability_diagram", "sweep_results", "throughput", "top_k_chart", "training_curves",
    "weight_stats",
]
