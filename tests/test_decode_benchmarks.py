"""The peers that benchmarks/jpeg_decode.py and benchmarks/input_pipeline.py time ``load_array``
against: a bare Pillow decode is only a fair floor if it does the same pixel work, so it must give
the very same pixels; and ``input_pipeline.py --quick`` sets small defaults that explicit options
still override. (The times themselves are the benchmarks' business.)"""

import sys
from pathlib import Path

import numpy as np
import pytest

import photo_data
from workbench.data import images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import input_pipeline  # noqa: E402
import jpeg_decode  # noqa: E402


@pytest.mark.parametrize("width, height, side", [
    (448, 448, 224),   # the 1/2 scale hits the side: no resize at all
    (500, 375, 224),   # no scale fits: the full decode, then the resize
    (1500, 1125, 160),  # 1/4 scale with a partial pixel, then the resize of its box
])
def test_the_pillow_floors_give_load_arrays_pixels(tmp_path, width, height, side):
    data = photo_data.jpeg(photo_data.photo(width, height, seed=width))
    expected = images.load_array(data, side)
    decoded = images.decode(data, draft_size=side)
    assert np.array_equal(jpeg_decode.pillow_floor(data, side, decoded), expected)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert np.array_equal(input_pipeline.pillow_one(str(path), side), expected)


def test_quick_sets_small_defaults_that_explicit_options_override():
    quick = input_pipeline.parse_args(["--quick"])
    full = input_pipeline.parse_args([])
    assert {name: getattr(quick, name) for name in input_pipeline.QUICK} == input_pipeline.QUICK
    assert quick.images < full.images and quick.photos < full.photos
    assert input_pipeline.parse_args(["--quick", "--images", "7"]).images == 7
    with pytest.raises(SystemExit):
        input_pipeline.parse_args(["--quick", "--images", "0"])
