"""Training throughput on CPU against GPU: measured on the CPU here, the ratio logic with a fake."""

import math

import matplotlib
import pytest

from workbench.studies import throughput
from workbench.studies.throughput import NOT_MEASURED, throughput_table, training_images_per_second

matplotlib.use("Agg")


def test_without_a_gpu_the_ratio_says_not_measured(monkeypatch):
    monkeypatch.setattr(throughput, "gpu_count", lambda: 0)
    result = throughput_table(["cifar_cnn:16"], batch_size=8, steps=2, warmup=1, progress="none")
    assert len(result.table) == 1
    row = result.table.iloc[0]
    assert (row["model"], row["image_size"], row["batch_size"]) == ("cifar_cnn", 16, 8)
    assert row["cpu_images_per_second"] > 0
    assert math.isnan(row["gpu_images_per_second"]) and row["gpu_over_cpu"] == NOT_MEASURED
    markdown = result.to_markdown()
    assert "| cifar_cnn | 16 | 8 |" in markdown and "| not measured: no GPU |" in markdown
    assert "GPU: none visible" in markdown and "2 timed steps after 1 warm-up" in markdown
    ax = result.plot().axes[0]
    assert [text.get_text() for text in ax.texts] == ["GPU not measured"]
    assert len(ax.patches) == 1  # the CPU bar only


def test_the_ratio_is_gpu_over_cpu(monkeypatch):
    calls = []

    def fake(backbone, *, device, **options):
        calls.append((backbone, device, options.get("precision", "float32")))
        return 100.0 if device == "cpu" else 900.0

    monkeypatch.setattr(throughput, "gpu_count", lambda: 1)
    monkeypatch.setattr(throughput, "gpu_name", lambda: "Fake GPU")
    monkeypatch.setattr(throughput, "training_images_per_second", fake)
    result = throughput_table(["cifar_cnn:32", ("lenet", 28)], progress="none")
    assert calls == [("cifar_cnn", "cpu", "float32"), ("cifar_cnn", "gpu", "mixed_float16"),
                     ("lenet", "cpu", "float32"), ("lenet", "gpu", "mixed_float16")]
    assert list(result.table["gpu_over_cpu"]) == [9.0, 9.0]
    assert "| 100.0 | 900.0 | mixed_float16 | 9.0x |" in result.to_markdown()
    assert "GPU: Fake GPU" in result.environment
    ax = result.plot().axes[0]
    assert [text.get_text() for text in ax.texts] == ["GPU 9.0x", "GPU 9.0x"]
    assert len(ax.patches) == 4


def test_bad_arguments_fail_fast(monkeypatch):
    monkeypatch.setattr(throughput, "gpu_count", lambda: 0)
    with pytest.raises(ValueError, match="models must be a non-empty list"):
        throughput_table("cifar_cnn:32")
    with pytest.raises(ValueError, match="'name:size' strings or \\(name, size\\) pairs, "
                                         "received: 'cifar_cnn'"):
        throughput_table(["cifar_cnn"])
    with pytest.raises(ValueError, match="device must be 'cpu' when the .* backend sees no GPU"):
        training_images_per_second("cifar_cnn", device="gpu")
    with pytest.raises(ValueError, match="warmup must be >= 1, received: 0"):
        training_images_per_second("cifar_cnn", warmup=0)
