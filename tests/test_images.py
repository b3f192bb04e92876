"""Decoding one image: deep pixels keep what the file says, and the decoders' chatter is kept quiet.

Every deep image is written as a camera, a microscope or scientific software writes it (by hand
where Pillow cannot, see ``messy_data.tiff_bytes``), and the result of :func:`open_image` is
compared with the conversion computed here in NumPy from the values put in.
"""

import io
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

import messy_data
from workbench.data.images import ImageRejected, decode, open_image
from workbench.data.scan import scan

SIDE = 32  # 1,024 pixels: enough for the 99.9% quantile to ignore one hot pixel
RNG = np.random.default_rng(0)


def values(low, high, dtype, shape=(SIDE, SIDE)):
    """Random values in ``low..high``, with both ends present."""
    if np.dtype(dtype).kind == "f":
        array = RNG.uniform(low, high, shape).astype(dtype)
    else:
        array = RNG.integers(low, high, shape, endpoint=True, dtype=np.int64).astype(dtype)
    array.flat[0], array.flat[1] = low, high
    return array


def levels(array, black, white):
    """The reference: ``black..white`` mapped linearly to 0..255, rounded."""
    scaled = (np.asarray(array, np.float64) - black) * 255.0 / (white - black)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def assert_grey(image, expected):
    pixels = np.asarray(image)
    assert pixels.shape == expected.shape + (3,) and pixels.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_12_bit_tiff_maps_its_declared_depth_to_black_and_white():
    twelve = values(0, 4095, np.uint16)
    assert_grey(open_image(messy_data.tiff_bytes(twelve, bits=12)), levels(twelve, 0, 4095))


def test_big_endian_16_bit_tiff_uses_its_max_sample_value():
    data = values(0, 4095, np.uint16)
    tiff = messy_data.tiff_bytes(data, big_endian=True, tags={281: (3, [4095])})
    with Image.open(io.BytesIO(tiff)) as header:
        assert header.mode == "I;16B"
    assert_grey(open_image(tiff), levels(data, 0, 4095))


@pytest.mark.parametrize("big_endian", [False, True])
def test_signed_16_bit_tiff_maps_0_to_32767(big_endian):
    data = values(0, 30000, np.int16)
    tiff = messy_data.tiff_bytes(data, big_endian=big_endian)  # Pillow: mode I, I;16S raw
    assert_grey(open_image(tiff), levels(data, 0, 32767))


def test_float_tiff_in_0_to_1_maps_to_0_to_255():
    data = values(0.0, 1.0, np.float32)
    assert_grey(open_image(messy_data.tiff_bytes(data)), levels(data, 0.0, 1.0))


def test_float_tiff_with_a_declared_range_maps_that_range():
    phase = values(-3.14, 3.14, np.float32)
    tiff = messy_data.tiff_bytes(phase, tags={340: (12, [-np.pi]), 341: (12, [np.pi])})
    assert_grey(open_image(tiff), levels(phase, -np.pi, np.pi))


def test_unsigned_32_bit_tiff_maps_the_whole_32_bit_range():
    data = values(2**30, 2**32 - 1, np.uint32)  # Pillow keeps these in int32: half wrap round
    assert_grey(open_image(messy_data.tiff_bytes(data)), levels(data, 0, 2**32 - 1))


def test_white_is_zero_16_bit_tiff_is_inverted():
    data = values(0, 65535, np.uint16)
    tiff = messy_data.tiff_bytes(data, photometric=0)
    assert_grey(open_image(tiff), 255 - levels(data, 0, 65535))


def test_16_bit_grey_png_with_a_transparent_value_is_composited_on_white():
    data = values(0, 65535, np.uint16)
    data[::3, ::2] = 1234
    png = messy_data.png_bytes(Image.fromarray(data), transparency=1234)
    expected = levels(data, 0, 65535)
    expected[data == 1234] = 255
    assert_grey(open_image(png), expected)


def test_8_bit_grey_png_with_a_transparent_value_is_composited_on_white():
    data = values(0, 255, np.uint8)
    data[1::4] = 77
    png = messy_data.png_bytes(Image.fromarray(data), transparency=77)
    expected = data.copy()
    expected[data == 77] = 255
    assert_grey(open_image(png), expected)


@pytest.mark.parametrize("name, data, words", [
    ("16-bit little-endian TIFF", messy_data.tiff_bytes(values(291, 694, np.uint16)),
     ["16-bit values 291..694", "nearly black"]),
    ("16-bit big-endian TIFF", messy_data.tiff_bytes(values(291, 694, np.uint16),
                                                     big_endian=True),
     ["16-bit values 291..694", "nearly black"]),
    ("16-bit PNG", messy_data.png_bytes(Image.fromarray(values(291, 694, np.uint16))),
     ["16-bit values 291..694", "nearly black"]),
    ("8-bit data in a 16-bit PNG", messy_data.png_bytes(Image.fromarray(
        values(0, 255, np.uint16))), ["16-bit values 0..255", "nearly black"]),
    ("float TIFF of a phase", messy_data.tiff_bytes(values(-3.14, 3.14, np.float32)),
     ["32-bit float values -3.14..3.14", "outside 0..1"]),
    ("float TIFF of 0..255", messy_data.tiff_bytes(values(0.0, 255.0, np.float32)),
     ["32-bit float values 0..255", "outside 0..1"]),
    ("float TIFF with NaN", messy_data.tiff_bytes(np.where(
        values(0.0, 1.0, np.float32) > 0.5, np.nan, 0.5).astype(np.float32)),
     ["NaN or infinity"]),
    ("signed 16-bit TIFF with negative values", messy_data.tiff_bytes(
        values(-1000, 1000, np.int16)), ["signed 16-bit values -1000..1000", "outside 0..32767"]),
])
def test_values_that_would_be_black_or_clipped_are_rejected_with_a_reason(name, data, words):
    with pytest.raises(ImageRejected) as error:
        open_image(data)
    assert error.value.reason == "unusable pixel values", name
    for word in words:
        assert word in error.value.detail, (name, error.value.detail)


def test_one_hot_pixel_does_not_hide_an_otherwise_black_image():
    data = values(291, 694, np.uint16)
    data[5, 5] = 65535  # a hot pixel of the sensor
    with pytest.raises(ImageRejected, match="nearly black"):
        open_image(messy_data.tiff_bytes(data))


def test_a_16_bit_tiff_whose_contrast_would_vanish_is_rejected_not_flat_grey():
    # ifd_tag_type.tiff: a picture in 7301..8206 of 0..65535, all 8-bit levels 28..32
    data = values(7301, 8206, np.uint16)
    encoded = io.BytesIO()
    Image.fromarray(data).save(encoded, "TIFF")  # Pillow writes it as I;16
    assert Image.open(io.BytesIO(encoded.getvalue())).mode == "I;16"
    with pytest.raises(ImageRejected) as error:
        open_image(encoded.getvalue())
    assert error.value.reason == "unusable pixel values"
    for words in ("16-bit values 7301..8206", "1.38% of 0..65535", "flat grey",
                  "stretch its contrast"):
        assert words in error.value.detail, error.value.detail


def test_a_uniform_16_bit_image_and_one_with_8_levels_of_contrast_are_kept():
    flat = np.full((SIDE, SIDE), 30000, np.uint16)  # nothing to lose: mid grey
    assert_grey(open_image(messy_data.tiff_bytes(flat)), levels(flat, 0, 65535))
    ramp = values(30000, 32100, np.uint16)  # 8.2 levels apart in 8 bits
    assert_grey(open_image(messy_data.tiff_bytes(ramp)), levels(ramp, 0, 65535))


def test_a_file_that_cannot_be_opened_says_why_in_words(tmp_path):
    for path, words in [(tmp_path / "gone.png", "gone.png does not exist"),
                        (tmp_path, "is a folder, not an image file")]:
        with pytest.raises(ImageRejected) as error:
            decode(path)
        assert error.value.reason == "unreadable" and words in error.value.detail
        assert "Errno" not in str(error.value)


def test_a_dark_16_bit_image_with_real_highlights_is_kept():
    data = values(0, 3000, np.uint16)
    data[:4] = values(20000, 65535, np.uint16, shape=(4, SIDE))  # an eighth of it is bright
    assert_grey(open_image(messy_data.tiff_bytes(data)), levels(data, 0, 65535))


# --- What Pillow and libtiff say goes into the reason, never onto the terminal. ---

def quiet_decode(data, **kwargs):
    """Decodes ``data`` while recording every warning that escapes; returns (result, warnings).

    ``record=True`` shows what would reach the user's terminal: pytest itself records warnings,
    so a terminal check alone could not fail.
    """
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        try:
            result = decode(data, **kwargs)
        except ImageRejected as error:
            result = error
    return result, [str(warning.message) for warning in escaped]


def test_a_damaged_tiff_tells_its_warnings_in_the_reason_and_prints_nothing(capfd):
    data = messy_data.truncated(messy_data.tiff_with_bad_tags(1, count=150), keep=0.9)
    error, escaped = quiet_decode(data)
    assert escaped == []
    assert isinstance(error, ImageRejected) and error.reason == "truncated or corrupt"
    assert "the decoder said: Tag data larger than file. Skipping tag 49152" in error.detail
    assert "more)" in error.detail and len(error.messages) >= 150
    assert capfd.readouterr().err == ""


def test_a_damaged_png_tells_its_warnings_in_the_reason_and_prints_nothing(capfd):
    data = messy_data.truncated(messy_data.png_with_bad_exif(2, count=150), keep=0.95)
    error, escaped = quiet_decode(data)
    assert escaped == []
    assert isinstance(error, ImageRejected) and error.reason == "truncated or corrupt"
    assert "Skipping tag 36864" in error.detail
    assert capfd.readouterr().err == ""


def test_libtiff_errors_go_into_the_reason_not_onto_the_c_stderr(capfd):
    error, escaped = quiet_decode(messy_data.corrupt_compressed_tiff(3))
    assert isinstance(error, ImageRejected) and error.reason == "truncated or corrupt"
    assert "libtiff: Using code not yet in table" in error.detail
    assert capfd.readouterr().err == ""  # libtiff writes to file descriptor 2 itself
    error, _ = quiet_decode(messy_data.corrupt_compressed_tiff(4, "tiff_adobe_deflate"))
    assert "libtiff: ZIPDecode: Decoding error" in error.detail
    assert capfd.readouterr().err == ""


def test_an_accepted_image_drops_what_the_decoder_said(capfd):
    result, escaped = quiet_decode(messy_data.jpeg_with_bad_exif(5))
    assert escaped == [] and capfd.readouterr().err == ""
    assert result.image.size == (messy_data.SIDE, messy_data.SIDE)


def test_warnings_outside_a_decode_are_shown_as_before():
    filters, show = list(warnings.filters), warnings.showwarning
    quiet_decode(messy_data.jpeg_with_bad_exif(6))
    assert warnings.filters == filters and warnings.showwarning is show
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("mine")
    assert [str(warning.message) for warning in seen] == ["mine"]


def test_a_thread_that_is_not_decoding_keeps_its_warnings_meanwhile():
    started, finish = threading.Event(), threading.Event()
    outcome = {}

    class SlowFile(io.BytesIO):
        """A damaged TIFF that makes its decoding thread wait until the main thread warned."""

        def read(self, *args):
            if not started.is_set():
                started.set()
                finish.wait(10)
            return super().read(*args)

    def decoding():
        data = messy_data.truncated(messy_data.tiff_with_bad_tags(7, count=5), keep=0.9)
        try:
            decode(SlowFile(data))
        except ImageRejected as error:
            outcome["error"] = error

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        worker = threading.Thread(target=decoding)
        worker.start()
        assert started.wait(10)
        warnings.warn("from the main thread, while the other one decodes")
        finish.set()
        worker.join(10)
    assert [str(warning.message) for warning in seen] == [
        "from the main thread, while the other one decodes"]
    assert "Skipping tag 49152" in outcome["error"].detail


def test_scan_gives_each_file_its_own_messages_whatever_the_threads(tmp_path, capfd):
    root = tmp_path / "data"
    for number in range(4):
        messy_data.write(root / f"a/tags{number}.tif", messy_data.truncated(
            messy_data.tiff_with_bad_tags(10 + number, count=40), keep=0.9))
        messy_data.write(root / f"a/lzw{number}.tif", messy_data.corrupt_compressed_tiff(
            20 + number))
        messy_data.write(root / f"a/exif{number}.jpg", messy_data.jpeg_with_bad_exif(30 + number))
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        tables = [scan(root, progress="none", workers=workers) for workers in (4, 1, 4)]
    assert escaped == [] and capfd.readouterr().err == ""
    for table in tables[1:]:  # the same words each time: no warning is shown only once
        assert table["detail"].tolist() == tables[0]["detail"].tolist()
    for row in tables[0].itertuples():
        if row.path.startswith("a/tags"):
            assert "Tag data larger than file" in row.detail and "libtiff" not in row.detail
        elif row.path.startswith("a/lzw"):
            assert "libtiff: Using code not yet in table" in row.detail
            assert "Tag data" not in row.detail
        else:
            assert row.status == "ok"
