"""workbench: a notebook-first transfer-learning workbench on TensorFlow and Keras 3.

The package imports nothing heavy at import time; import the module you need::

    from workbench.data import scan, split
    from workbench import training
"""

__version__ = "0.1.0"
