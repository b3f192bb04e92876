"""Tests for workbench.data.pipeline, cache and augment: the decode-once cache, augmentation and
deterministic batches."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data import cache, images, pipeline
from workbench.data.augment import (AUGMENT_DRAWS, Augment, augment_argument, few_images,
                                    resolve_augment, stored_size)
from workbench.data.cache import build_cache
from workbench.data.pipeline import Batches

SIZE = (8, 12)  # (height, width): not square, so a swapped axis would show


@pytest.fixture
def photo_dir(tmp_path):
    """A dozen small images of different sizes and formats, each with distinct content."""
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        height, width = 10 + i, 30 - i
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        name = f"a/img{i:02d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(pixels).save(root / name)
        paths.append(name)
    return root, paths


@pytest.fixture
def counted_loads(monkeypatch):
    """Counts the images decoded by build_cache."""
    calls = []
    real = images.load_array

    def load_array(path, size, mode):
        calls.append(Path(path).name)
        return real(path, size, mode)

    monkeypatch.setattr(cache.images, "load_array", load_array)
    return calls


def _build(photo_dir, cache_dir, **options):
    root, paths = photo_dir
    options = {"image_size": SIZE, "resize_mode": "squash", "workers": 2, "progress": "none",
               **options}
    return build_cache(paths, root=root, cache_dir=cache_dir, **options)


# --- cache ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", images.RESIZE_MODES)
def test_cache_holds_load_array_of_each_image(photo_dir, tmp_path, mode):
    root, paths = photo_dir
    cache = _build(photo_dir, tmp_path / "cache", resize_mode=mode)
    assert cache.shape == (len(paths), *SIZE, 3) and cache.dtype == np.uint8
    assert isinstance(cache, np.memmap)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(cache[i], images.load_array(root / path, SIZE, mode))
    info = list((tmp_path / "cache").glob("*.json"))
    assert len(info) == 1 and '"resize_mode": "%s"' % mode in info[0].read_text()


def test_cache_is_reused_when_nothing_changed(photo_dir, tmp_path, counted_loads):
    first = _build(photo_dir, tmp_path / "cache")
    assert len(counted_loads) == 12
    written = os.stat(first.filename).st_mtime_ns
    second = _build(photo_dir, tmp_path / "cache")
    assert len(counted_loads) == 12  # nothing decoded again
    assert second.filename == first.filename
    assert os.stat(second.filename).st_mtime_ns == written
    np.testing.assert_array_equal(first, second)


def test_cache_files_get_the_mode_of_any_new_file(photo_dir, tmp_path):
    # a temporary file from mkstemp is 0600 and would keep that mode after its rename, so a
    # cache shared by a group could not be read by its other users
    umask = os.umask(0)
    os.umask(umask)
    cache = _build(photo_dir, tmp_path / "cache")
    info = Path(cache.filename).with_suffix(".json")
    for path in (Path(cache.filename), info):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path.name
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        sorted([Path(cache.filename).name, info.name])  # no temporary file left


@pytest.mark.parametrize("change", ["size", "mode"])
def test_cache_is_rebuilt_when_size_or_mode_changes(photo_dir, tmp_path, counted_loads, change):
    first = _build(photo_dir, tmp_path / "cache")
    options = {"image_size": 6} if change == "size" else {"resize_mode": "pad"}
    second = _build(photo_dir, tmp_path / "cache", **options)
    assert len(counted_loads) == 24
    assert second.filename != first.filename
    root, paths = photo_dir
    expected = images.load_array(root / paths[0], options.get("image_size", SIZE),
                                 options.get("resize_mode", "squash"))
    np.testing.assert_array_equal(second[0], expected)


def test_cache_is_rebuilt_when_a_file_changes(photo_dir, tmp_path, counted_loads):
    root, paths = photo_dir
    first = _build(photo_dir, tmp_path / "cache")
    Image.new("RGB", (20, 20), (250, 10, 10)).save(root / paths[4])
    second = _build(photo_dir, tmp_path / "cache")
    assert len(counted_loads) == 24
    assert second.filename != first.filename
    np.testing.assert_array_equal(second[4], np.full((*SIZE, 3), (250, 10, 10), np.uint8))
    np.testing.assert_array_equal(second[2], first[2])


def test_cache_is_rebuilt_when_a_file_is_touched_or_the_list_changes(photo_dir, tmp_path,
                                                                     counted_loads):
    root, paths = photo_dir
    first = _build(photo_dir, tmp_path / "cache")
    stat = os.stat(root / paths[0])
    os.utime(root / paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes
    assert _build(photo_dir, tmp_path / "cache").filename != first.filename
    assert len(counted_loads) == 24
    shorter = build_cache(paths[1:], root=root, image_size=SIZE, cache_dir=tmp_path / "cache",
                          progress="none")
    assert len(shorter) == 11 and len(counted_loads) == 35


def test_half_written_cache_is_not_trusted(photo_dir, tmp_path, counted_loads):
    cache_dir = tmp_path / "cache"
    good = np.array(_build(photo_dir, cache_dir))
    array_path = Path(_build(photo_dir, cache_dir).filename)
    # Simulate a build killed before its description was renamed into place: the temp files it
    # leaves are ignored, and without the JSON even a full-size array is not trusted.
    array_path.with_suffix(".json").unlink()
    np.save(array_path, np.zeros_like(good))
    (cache_dir / f".{array_path.name}.abc123.tmp").write_bytes(b"partial")
    rebuilt = _build(photo_dir, cache_dir)
    assert len(counted_loads) == 24
    np.testing.assert_array_equal(rebuilt, good)


def test_failed_build_leaves_no_cache_and_names_every_bad_file(photo_dir, tmp_path):
    root, paths = photo_dir
    (root / paths[1]).write_bytes(b"not an image")
    (root / paths[5]).write_bytes(b"")
    with pytest.raises(cache.CacheBuildError) as caught:
        _build(photo_dir, tmp_path / "cache")
    assert [Path(path).name for path, _ in caught.value.failures] == ["img01.png", "img05.png"]
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("bad, message", [
    ({"image_size": 0}, "image_size must be >= 1, received: 0"),
    ({"image_size": (8, 8, 3)}, "image_size must be an int or (height, width)"),
    ({"resize_mode": "stretch"}, "resize_mode must be one of"),
    ({"workers": 0}, "workers must be >= 1, received: 0"),
])
def test_cache_rejects_bad_arguments(photo_dir, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _build(photo_dir, tmp_path / "cache", **bad)


# --- batches -------------------------------------------------------------------------------

def _data(count=10, side=6):
    """Images whose first pixel encodes their index, so batches can be traced to indices."""
    pixels = np.random.default_rng(1).integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    pixels[:, 0, 0, 0] = np.arange(count)
    return pixels, np.arange(count) % 3


def _indices(x):
    return x[:, 0, 0, 0].tolist()


def test_same_seed_and_epoch_give_identical_batches():
    x, y = _data()
    a = Batches(x, y, batch_size=4, seed=7, augment=Augment(flip=True, placement="pipeline"))
    b = Batches(x, y, batch_size=4, seed=7, augment=Augment(flip=True, placement="pipeline"))
    for (xa, ya), (xb, yb) in zip(a.epoch(3), b.epoch(3), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_epochs_are_different_permutations_with_every_image_once():
    x, y = _data(count=10)
    batches = Batches(x, y, batch_size=4, seed=0)
    assert batches.steps_per_epoch == 3
    orders = []
    for epoch in range(3):
        served = [(xb, yb) for xb, yb in batches.epoch(epoch)]
        assert [len(yb) for _, yb in served] == [4, 4, 2]
        order = [i for xb, _ in served for i in _indices(xb)]
        assert sorted(order) == list(range(10))
        assert [label for _, yb in served for label in yb] == [i % 3 for i in order]
        assert all(yb.dtype == np.int32 and xb.dtype == np.uint8 for xb, yb in served)
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    other_seed = [i for xb, _ in Batches(x, y, batch_size=4, seed=1).epoch(0) for i in _indices(xb)]
    assert other_seed != orders[0]


def test_batch_matches_the_epoch_iterator_and_validation_keeps_file_order():
    x, y = _data(count=10)
    batches = Batches(x, y, batch_size=4, seed=3)
    for index, (xb, yb) in enumerate(batches.epoch(2, prefetch=0)):
        np.testing.assert_array_equal(batches.batch(2, index)[0], xb)
    validation = Batches(x, y, batch_size=4, shuffle=False)
    served = [i for epoch in (0, 5) for xb, _ in validation.epoch(epoch) for i in _indices(xb)]
    assert served == list(range(10)) * 2


def test_drop_remainder_drops_only_the_last_short_batch():
    x, y = _data(count=10)
    batches = Batches(x, y, batch_size=4, drop_remainder=True)
    assert batches.steps_per_epoch == 2
    assert [len(yb) for _, yb in batches.epoch(0)] == [4, 4]
    with pytest.raises(ValueError, match="index must be < steps_per_epoch=2, received: 2"):
        batches.batch(0, 2)


NO_AUGMENT = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, rotation=0.0, brightness=0.0,
                  contrast=0.0, saturation=0.0, placement="pipeline")


def test_augmentation_changes_pixels_only_when_enabled_and_is_seeded():
    x, y = _data(count=8, side=16)
    plain = Batches(x, y, batch_size=8, seed=0, augment=Augment(**NO_AUGMENT)).batch(0, 0)[0]
    reference = Batches(x, y, batch_size=8, seed=0).batch(0, 0)[0]
    np.testing.assert_array_equal(plain, reference)
    for change in ({"flip": True}, {"scale": (0.5, 0.5)}, {"ratio": (0.5, 2.0)},
                   {"rotation": 30.0}, {"brightness": 0.5}, {"contrast": 0.5},
                   {"saturation": 0.9}):
        seeded = Batches(x, y, batch_size=8, seed=0, augment=Augment(**{**NO_AUGMENT, **change}))
        augmented = seeded.batch(0, 0)[0]
        assert augmented.shape == reference.shape and augmented.dtype == np.uint8
        assert not np.array_equal(augmented, reference), change
        np.testing.assert_array_equal(seeded.batch(0, 0)[0], augmented)  # deterministic
        assert not np.array_equal(seeded.batch(1, 0)[0], augmented)  # a new draw each epoch
    # The order does not depend on the augmentation, so labels still match the images.
    flipped_y = Batches(x, y, batch_size=8, seed=0, augment=Augment(flip=True)).batch(0, 0)[1]
    np.testing.assert_array_equal(flipped_y, Batches(x, y, batch_size=8, seed=0).batch(0, 0)[1])


def test_flip_mirrors_whole_images():
    x, y = _data(count=16, side=5)
    augment = Augment(**{**NO_AUGMENT, "flip": True})
    flipped = Batches(x, y, batch_size=16, shuffle=False, augment=augment).batch(0, 0)[0]
    mirrored = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, x)]
    unchanged = [np.array_equal(f, o) for f, o in zip(flipped, x)]
    assert all(m or u for m, u in zip(mirrored, unchanged))
    assert 0 < sum(mirrored) < 16


def _windows_of(stored, served):
    """The (top, left) of each served image inside its stored image, or None where it is not
    an exact window of it."""
    size = served.shape[1:3]
    found = []
    for image, window in zip(stored, served):
        spots = [(top, left) for top in range(image.shape[0] - size[0] + 1)
                 for left in range(image.shape[1] - size[1] + 1)
                 if np.array_equal(image[top:top + size[0], left:left + size[1]], window)]
        found.append(spots[0] if len(spots) == 1 else None)
    return found


@pytest.mark.parametrize("placement", ["pipeline", "model"])
def test_images_stored_larger_are_served_as_windows_at_stored_resolution(placement):
    # the margin of a larger cache: without a crop, the served pixels are stored pixels, cut at
    # random offsets with an augment and at the centre without
    stored = np.random.default_rng(0).integers(0, 256, (40, 12, 14, 3), dtype=np.uint8)
    y = np.zeros(40, int)
    augment = Augment(**{**NO_AUGMENT, "placement": placement})
    served = Batches(stored, y, batch_size=40, shuffle=False, augment=augment,
                     image_size=(10, 11)).batch(0, 0)[0]
    assert served.shape == (40, 10, 11, 3)
    spots = _windows_of(stored, served)
    assert None not in spots and len(set(spots)) == 3 * 4  # every offset turns up
    centred = Batches(stored, y, batch_size=40, shuffle=False, image_size=(10, 11)).batch(0, 0)[0]
    assert set(_windows_of(stored, centred)) == {(1, 1)}
    with pytest.raises(ValueError, match="image_size must not exceed the stored images' 12x14"):
        Batches(stored, y, batch_size=4, image_size=13)


def test_pipeline_rotation_and_crops_move_pixels_without_inventing_any():
    stored = np.random.default_rng(1).integers(0, 256, (8, 20, 20, 3), dtype=np.uint8)
    augment = Augment(scale=(0.3, 1.0), rotation=45.0, flip=True, brightness=0.0,
                      contrast=0.0, saturation=0.0, placement="pipeline")
    served = augment.apply(stored, np.random.default_rng(0), size=16)
    assert served.shape == (8, 16, 16, 3)
    for image, out in zip(stored, served):  # nearest neighbour: every pixel is a stored one
        palette = {tuple(pixel) for pixel in image.reshape(-1, 3)}
        assert {tuple(pixel) for pixel in out.reshape(-1, 3)} <= palette


def _coordinate_images(count, height, width):
    """Images whose red channel is 3 x column and green 4 x row, so the pixels served tell
    where in the stored image they came from."""
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([columns * 3, rows * 4, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    return np.repeat(image[None], count, axis=0)


def _points(batch):
    """Stored (column, row) that output pixels at a quarter and three quarters of each side
    came from, rounded as nearest-neighbour sampling rounds them: 8 numbers per image."""
    batch = np.asarray(batch, np.float64)
    height, width = batch.shape[1:3]
    picks = [batch[:, r, c, :2] for r in (height // 4, 3 * height // 4)
             for c in (width // 4, 3 * width // 4)]
    return np.floor(np.concatenate(picks, axis=1) / np.tile([3, 4], 4) + 0.5)


def _both_placements(augment, stored, size, rounds=4, batch=250):
    """What the pipeline placement serves, and what the model placement's layer makes of the
    windows it is served, over ``rounds * 2`` batches of each."""
    keras = pytest.importorskip("keras")
    from workbench.models import RandomAugment

    labels = np.zeros(len(stored), int)
    pipe = Batches(stored, labels, batch_size=batch, seed=0, image_size=size,
                   augment=dataclasses.replace(augment, placement="pipeline"))
    model = Batches(stored, labels, batch_size=batch, seed=1, image_size=size,
                    augment=dataclasses.replace(augment, placement="model"))
    layer = RandomAugment(augment, seed=5)
    served, layered = [], []
    for epoch in range(rounds):
        for index in range(pipe.steps_per_epoch):
            served.append(pipe.batch(epoch, index)[0])
            windows = model.batch(epoch, index)[0].astype("float32")
            layered.append(keras.ops.convert_to_numpy(layer(windows, training=True)))
    return np.concatenate(served), np.concatenate(layered)


def test_both_placements_draw_the_same_crops():
    stats = pytest.importorskip("scipy.stats")
    augment = Augment(scale=(0.3, 1.0), ratio=(0.6, 1.6), flip=True, rotation=15.0,
                      brightness=0.0, contrast=0.0, saturation=0.0)
    stored = _coordinate_images(500, 60, 72)  # a margin of about 1.15 around (52, 62)
    served, layered = _both_placements(augment, stored, (52, 62))
    ours, theirs = _points(served), _points(layered)
    for column in range(ours.shape[1]):
        assert stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > 1e-3, column
    # and they are crops: points spread over the stored image, mirrored in about half
    left, right = ours[:, 0], ours[:, 2]
    assert 0.4 < np.mean(left > right) < 0.6 and np.ptp(left) > 40


def test_both_placements_draw_the_same_colours():
    stats = pytest.importorskip("scipy.stats")
    augment = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.3, contrast=0.3,
                      saturation=0.5, rotation=0.0)
    rng = np.random.default_rng(2)
    image = np.repeat(np.repeat(rng.integers(30, 220, (6, 6, 3)), 4, axis=0), 4, axis=1)
    stored = np.repeat(image[None].astype(np.uint8), 500, axis=0)
    served, layered = _both_placements(augment, stored, (24, 24), rounds=2)
    for statistic in (lambda b: b.mean(axis=(1, 2)), lambda b: b.std(axis=(1, 2))):
        ours, theirs = statistic(served.astype(np.float64)), statistic(layered)
        for channel in range(3):
            assert stats.ks_2samp(ours[:, channel], theirs[:, channel]).pvalue > 1e-3
    assert served.mean(axis=(1, 2, 3)).std() > 10  # the colours did change


def test_params_stay_in_range():
    augment = Augment(scale=(0.2, 0.9), ratio=(0.5, 2.0), rotation=20.0, flip=True)
    params = augment.params(np.random.default_rng(0).random((AUGMENT_DRAWS, 5000)))
    area = params["width"] * params["height"]
    assert params["width"].max() <= 1 and params["height"].max() <= 1
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.9 + 1e-9
    assert (params["left"] + params["width"]).max() <= 1 and params["top"].min() >= 0
    assert set(np.unique(params["mirrored"])) == {0.0, 1.0}
    assert np.abs(params["angle"]).max() <= np.radians(20)
    assert 0.8 <= params["brightness"].min() and params["brightness"].max() <= 1.2


def test_stored_size_never_exceeds_the_images():
    assert stored_size(224, 1.15) == 258
    assert stored_size(224, 1.15, short_sides=[300, 400, 240]) == 258
    assert stored_size(224, 1.15, short_sides=[230, 240, 3000]) == 240
    assert stored_size(32, 1.15, short_sides=[32, 32, 32]) == 32  # no upsampling
    assert stored_size(32, 1.15, short_sides=[20]) == 32


def test_few_images_rule_and_the_text_forms_of_augment():
    assert few_images(np.repeat(np.arange(3), 99))
    assert not few_images(np.repeat(np.arange(3), 100))
    assert few_images(np.r_[np.repeat(0, 5000), np.repeat([1, 2], 10)])  # the median
    assert augment_argument("auto") == "auto"
    assert augment_argument("off") is None and augment_argument("") is None
    assert augment_argument("on") == Augment()
    assert augment_argument("on+flip+model") == Augment(flip=True, placement="model")
    assert augment_argument("auto+flip") == ("auto", Augment(flip=True))
    few, many = np.repeat(np.arange(2), 10), np.repeat(np.arange(2), 1000)
    assert resolve_augment("auto", few) == Augment()
    assert resolve_augment("auto", many) is None
    assert resolve_augment("auto+flip", few) == Augment(flip=True)
    assert resolve_augment("on", many) == Augment()
    assert resolve_augment(None, few) is None
    for bad in ("yes", "on+mirror", "off+flip", "on+model+pipeline"):
        with pytest.raises(ValueError, match="augment"):
            augment_argument(bad)


def test_names_moved_out_of_pipeline_still_work_with_a_deprecation_warning():
    from workbench.data import augment

    for name, home in (("build_cache", cache), ("CacheBuildError", cache),
                       ("augment_argument", augment), ("FEW_IMAGES_PER_CLASS", augment)):
        with pytest.warns(DeprecationWarning, match=f"pipeline.{name} is deprecated .*: "
                                                    f"import it from {home.__name__}"):
            assert getattr(pipeline, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        pipeline.nothing_here  # noqa: B018


@pytest.mark.parametrize("bad, message", [
    ({"batch_size": 0}, "batch_size must be >= 1, received: 0"),
    ({"seed": -1}, "seed must be >= 0, received: -1"),
    ({"augment": "flip"}, "augment must be an Augment or None, received: 'flip'"),
    ({"batch_size": 11, "drop_remainder": True}, "batch_size must be <= the number of images"),
])
def test_batches_reject_bad_arguments(bad, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        Batches(x, y, **{"batch_size": 4, **bad})


def test_batches_reject_bad_arrays():
    x, y = _data()
    with pytest.raises(ValueError, match="images must be a uint8 array of shape"):
        Batches(x.astype(np.float32), y, batch_size=2)
    with pytest.raises(ValueError, match="labels must be 10 integers"):
        Batches(x, y[:5], batch_size=2)
    with pytest.raises(ValueError, match="rotation must be <= 45.0, received: 90"):
        Augment(rotation=90)
    with pytest.raises(ValueError, match=r"scale must be \(min, max\) with min <= max"):
        Augment(scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="placement must be one of"):
        Augment(placement="gpu")


def _expected_stream(batches, start_epoch, epochs):
    return [batches.batch(e, i) for e in range(start_epoch, start_epoch + epochs)
            for i in range(batches.steps_per_epoch)]


def _assert_same_stream(served, expected):
    assert len(served) == len(expected)
    for (xs, ys), (xe, ye) in zip(served, expected):
        np.testing.assert_array_equal(np.asarray(xs), xe)
        np.testing.assert_array_equal(np.asarray(ys), ye)


def test_py_dataset_serves_consecutive_epochs_and_ignores_peeking():
    x, y = _data(count=10)
    batches = Batches(x, y, batch_size=4, seed=5, augment=Augment(placement="pipeline"))
    dataset = batches.as_py_dataset(start_epoch=2)
    assert dataset.num_batches is None  # infinite: Keras is given steps_per_epoch
    # What Keras does before training: peek at the first batch, then end the "epoch".
    dataset[0]
    dataset.on_epoch_begin()
    dataset.on_epoch_end()
    served = [dataset[i] for i in range(3 * batches.steps_per_epoch)]
    _assert_same_stream(served, _expected_stream(batches, 2, 3))
    finite = batches.as_py_dataset(start_epoch=4, epochs=1, prefetch=0)
    assert finite.num_batches == 3
    _assert_same_stream(list(finite), _expected_stream(batches, 4, 1))
    for outside in (-1, 3):  # the stream ends: Keras stops at num_batches, a caller is told
        with pytest.raises(IndexError, match=rf"\[0, 3\), received: {outside}"):
            finite[outside]


def test_keras_fit_on_py_dataset_sees_the_batches_of_each_epoch():
    keras = pytest.importorskip("keras")
    x, y = _data(count=10)
    batches = Batches(x, y, batch_size=4, seed=5)
    seen = []

    class Record(keras.layers.Layer):
        def call(self, inputs, training=None):
            if training:  # the first pixel of each image is its index
                seen.append(keras.ops.convert_to_numpy(inputs[:, 0, 0, 0]).astype(int).tolist())
            return inputs

    inputs = keras.Input((6, 6, 3))
    recorded = Record()(keras.ops.cast(inputs, "float32"))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(recorded))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    model.fit(batches.as_py_dataset(start_epoch=1), steps_per_epoch=batches.steps_per_epoch,
              initial_epoch=1, epochs=3, shuffle=False, verbose=0)
    expected = [_indices(xb) for epoch in (1, 2) for xb, _ in batches.epoch(epoch)]
    assert seen == expected


def test_tf_dataset_starting_at_epoch_k_matches_batches():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data is used only on the TensorFlow backend")
    x, y = _data(count=10)
    for placement, size in (("pipeline", None), ("pipeline", 5), ("model", 5)):
        batches = Batches(x, y, batch_size=4, seed=9, image_size=size,
                          augment=Augment(flip=True, placement=placement))
        dataset = batches.as_tf_dataset(start_epoch=3, epochs=2)
        served = [(xb.numpy(), yb.numpy()) for xb, yb in dataset]
        assert served[0][0].dtype == np.uint8 and served[0][1].dtype == np.int32
        assert served[0][0].shape[1:3] == ((size, size) if size else (6, 6))
        _assert_same_stream(served, _expected_stream(batches, 3, 2))
        forever = batches.as_tf_dataset(start_epoch=3).take(7)
        _assert_same_stream([(a.numpy(), b.numpy()) for a, b in forever],
                            _expected_stream(batches, 3, 3)[:7])


def test_tf_dataset_runs_no_autotuning_thread_that_its_deletion_would_wait_for():
    # Destroying a tf.data iterator joins its autotuning thread, which sleeps up to a minute
    # between rounds; Keras leaves the iterator of a stopped or interrupted fit to the garbage
    # collector, so a later collection froze the process for 10-14 s. The iterator Keras
    # makes from our dataset must not start that thread.
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data is used only on the TensorFlow backend")
    x, y = _data(count=10)
    for augment in (None, Augment(flip=True, placement="pipeline")):
        batches = Batches(x, y, batch_size=4, seed=9, augment=augment, image_size=5)
        for dataset in (batches.as_tf_dataset(), batches.as_tf_dataset(2, epochs=1),
                        batches.for_keras(start_epoch=1)):
            assert dataset.options().autotune.enabled is False
            # the datasets Keras builds on it (class weights: a map) keep the option
            assert dataset.map(lambda xb, yb: (xb, yb)).options().autotune.enabled is False


def test_for_keras_picks_the_backend_native_dataset():
    keras = pytest.importorskip("keras")
    x, y = _data()
    dataset = Batches(x, y, batch_size=4).for_keras()
    expected = "PyDataset" if keras.backend.backend() != "tensorflow" else "Dataset"
    assert any(cls.__name__.endswith(expected) for cls in type(dataset).__mro__)


def test_random_augment_layer_is_active_only_in_training_and_saved_with_the_model(tmp_path):
    keras = pytest.importorskip("keras")
    from workbench.models import RandomAugment, load_model

    layer = RandomAugment(Augment(flip=True), seed=3)
    batch = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(batch, training=False)), batch)
    trained = keras.ops.convert_to_numpy(layer(batch, training=True))
    assert trained.shape == batch.shape and not np.allclose(trained, batch)
    assert trained.min() >= 0 and trained.max() <= 255
    assert not np.allclose(keras.ops.convert_to_numpy(layer(batch, training=True)), trained)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Flatten()(RandomAugment(Augment(), seed=1)(inputs)))
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.layers[1].augment == Augment() and loaded.layers[1].seed == 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(batch)), batch.reshape(4, -1))
    with pytest.raises(ValueError, match="augment must be an Augment"):
        RandomAugment("flip")


def test_tf_dataset_reads_from_the_array_when_it_is_too_large_to_copy(monkeypatch):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data is used only on the TensorFlow backend")
    monkeypatch.setattr(pipeline, "_memory_bytes", lambda: 0)
    x, y = _data(count=10)
    for augment in (None, Augment(flip=True, placement="pipeline")):
        batches = Batches(x, y, batch_size=3, seed=4, augment=augment, drop_remainder=True)
        served = [(a.numpy(), b.numpy()) for a, b in batches.as_tf_dataset(start_epoch=1,
                                                                           epochs=2)]
        assert served[0][0].shape == (3, 6, 6, 3)
        _assert_same_stream(served, _expected_stream(batches, 1, 2))


# --- resizing: what the cache holds -------------------------------------------------------

def test_shrinking_averages_pixels_instead_of_aliasing():
    # A one-pixel checkerboard has no detail a 3-4x smaller image can show: it must turn grey,
    # not into a coarser pattern (std 127.5) as picking every n-th pixel would.
    checker = (np.indices((750, 1000)).sum(axis=0) % 2 * 255).astype(np.uint8)
    for mode in images.RESIZE_MODES:
        small = np.asarray(images.resize(Image.fromarray(checker).convert("RGB"), 224, mode),
                           np.float32)
        content = small[small.any(axis=-1)] if mode == "pad" else small
        assert abs(content.mean() - 127.5) < 5 and content.std() < 15, mode


def test_shrunk_photo_is_close_to_a_high_quality_reference():
    rows, cols = np.mgrid[0:375, 0:500]
    rng = np.random.default_rng(0)
    photo = np.stack([120 + 60 * np.sin(cols / 17.0 + c) * np.cos(rows / 23.0) for c in range(3)],
                     axis=-1) + rng.normal(0, 4, (375, 500, 3))
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    reference = np.asarray(image.resize((224, 224), Image.LANCZOS), np.float32)
    ours = np.asarray(images.resize(image, 224, "squash"), np.float32)
    nearest = np.asarray(image.resize((224, 224), Image.NEAREST), np.float32)
    assert np.abs(ours - reference).mean() < 1.5
    assert np.abs(ours - reference).mean() < np.abs(nearest - reference).mean() / 2


def test_enlarging_interpolates_instead_of_repeating_pixels():
    tiny = Image.fromarray(np.array([[[0] * 3, [200] * 3], [[200] * 3, [0] * 3]], np.uint8))
    for mode in images.RESIZE_MODES:
        large = np.asarray(images.resize(tiny, 16, mode))
        assert len(np.unique(large)) > 4, mode  # blends between the four pixels


def test_a_build_removes_the_temporary_files_of_killed_builds_only(photo_dir, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid, live_pid = int(dead.stdout), os.getppid()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    # the names atomic_path gives the array and its description while they are written
    killed = [cache_dir / f".images-0123.npy.{dead_pid}.0a1b2c3d.npy",
              cache_dir / f".images-0123.json.{dead_pid}.4e5f6a7b.json"]
    running = [cache_dir / f".images-4567.npy.{live_pid}.0a1b2c3d.npy"]
    for path in killed + running:
        path.write_bytes(b"partial")
    _build(photo_dir, cache_dir)
    assert [path.exists() for path in killed + running] == [False, False, True]


def test_untuned_keeps_no_dataset_alive_and_the_stream_base_is_one_class():
    import gc
    import weakref

    tf = pytest.importorskip("tensorflow")
    dataset = tf.data.Dataset.range(3)
    served = pipeline.untuned(dataset)
    assert served.options().autotune.enabled is False and list(served) == list(dataset)
    gone = weakref.ref(dataset), weakref.ref(served)
    del dataset, served
    gc.collect()
    assert [ref() for ref in gone] == [None, None]  # a run's images are not held after it
    assert pipeline.stream_dataset_class() is pipeline.stream_dataset_class()
