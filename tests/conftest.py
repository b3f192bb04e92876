"""Shared test setup: quiet TensorFlow, headless matplotlib."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

# The served run is trained once per session for the serve, browser and widget tests; a fixture
# imported into each module instead would be a separate fixture, trained once per module.
from serving import served_run  # noqa: E402, F401
