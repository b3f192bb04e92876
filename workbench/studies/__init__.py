"""Studies built on training: each module runs one kind of experiment and returns a result
object holding its numbers, with ``.plot(ax=None)`` (and ``.save(folder)`` where it writes
files).

=========================  ===================================================================
:mod:`.sweep`              a parameterised notebook run once per combination (papermill,
                           local processes or Dask) into ``results.csv``
:mod:`.recipes`            training recipes compared over seeds (``compare_recipes``,
                           ``summarize_runs``)
:mod:`.batch_size`         the batch-size study's table and the published one
:mod:`.throughput`         training images/s on the CPU and the GPU
:mod:`.split_chain`        a chain-shaped model, its split points, its device and server parts
:mod:`.split_profile`      bytes and compute per split, end-to-end latency per bandwidth
:mod:`.bottleneck`         fewer channels at the split (a 1x1 bottleneck, or the narrowed
                           convolution), fine-tuned: accuracy against bytes sent
:mod:`.narrow`             the published method: the convolution before a split narrowed to
                           k filters, starting from the k of largest norm
:mod:`.published`          the published numbers (``published.json``) and their sources
=========================  ===================================================================
"""
