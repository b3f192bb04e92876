"""Only the accepted formats are ever parsed: scan, prediction, the CLI and the web service refuse
the others (BLP, DDS, EPS, JPEG 2000, ...) before any of their code runs, naming the format.

Each foreign file is written here: by Pillow where it can (BLP, DDS, JPEG 2000), by hand where it
cannot (a few lines of PostScript, a BLP holding a large JPEG). A spy on Pillow's table of
openers records every foreign plugin that is asked to read a file; it must stay empty.
"""

import io
import struct
import tracemalloc

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from workbench.data.images import (ACCEPTED_FORMAT_NAMES, ACCEPTED_FORMATS, ImageRejected,
                                   decode, load_array, open_header)
from workbench.data.scan import scan
from workbench.deploy.limits import decode_estimate

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def _blp_holding_a_jpeg(side: int) -> bytes:
    """A BLP1 whose header says 8x8 but whose JPEG data is ``side`` x ``side``: Pillow's BLP
    decoder decodes that JPEG in full, into Python bytes, whatever the header said."""
    jpeg = _encoded(Image.new("L", (side, side), 128), "JPEG", quality=1)
    header = b"BLP1" + struct.pack("<iIIIi", 0, 0, 8, 8, 0) + bytes(4)  # JPEG-compressed, 8x8
    offsets = struct.pack("<16I", 28 + 128 + 4 + len(jpeg), *[0] * 15)
    return header + offsets + struct.pack("<16I", *[0] * 16) + struct.pack("<I", len(jpeg)) + jpeg


def foreign_files() -> dict[str, bytes]:
    """Tiny files in formats Pillow reads but the workbench does not, by Pillow's name."""
    small = Image.new("RGB", (8, 8), (200, 40, 40))
    return {"BLP": _encoded(small.convert("P"), "BLP"), "DDS": _encoded(small, "DDS"),
            "JPEG2000": _encoded(small, "JPEG2000"), "EPS": EPS,
            "PPM": _encoded(small, "PPM"), "ICO": _encoded(small, "ICO")}


def accepted_files() -> dict[str, bytes]:
    small = Image.new("RGB", (16, 12), (200, 40, 40))
    files = {format: _encoded(small, format) for format in ACCEPTED_FORMATS}
    # a multi-picture JPEG, as cameras write: Pillow's JPEG opener reads it (format MPO)
    files["MPO"] = _encoded(small, "MPO", save_all=True, append_images=[small])
    return files


@pytest.fixture
def foreign_plugins_asked(monkeypatch):
    """The foreign formats whose openers Pillow ran, in order (it must stay empty)."""
    Image.init()
    asked = []
    for name, (factory, accept) in list(Image.OPEN.items()):
        if name in ACCEPTED_FORMATS:
            continue

        def spy(*args, _name=name, _factory=factory, **kwargs):
            asked.append(_name)
            return _factory(*args, **kwargs)

        monkeypatch.setitem(Image.OPEN, name, (spy, accept))
    return asked


def test_the_spy_sees_a_foreign_opener_run(foreign_plugins_asked):
    with Image.open(io.BytesIO(foreign_files()["DDS"])):  # Pillow without the formats list
        pass
    assert foreign_plugins_asked == ["DDS"]


@pytest.mark.parametrize("name", sorted(foreign_files()))
def test_foreign_formats_are_refused_unparsed_naming_the_format(name, foreign_plugins_asked):
    data = foreign_files()[name]
    for read in (lambda: decode(data), lambda: open_header(data),
                 lambda: decode_estimate(data, 16), lambda: load_array(io.BytesIO(data), 16)):
        with pytest.raises(ImageRejected) as error:
            read()
        assert error.value.reason == "unsupported format"
        assert error.value.detail == (f"format {name} (by its first bytes) is not one of "
                                      f"{ACCEPTED_FORMAT_NAMES}")
    assert foreign_plugins_asked == []


def test_accepted_formats_still_open(foreign_plugins_asked):
    for name, data in accepted_files().items():
        decoded = decode(data)
        assert (decoded.width, decoded.height) == (16, 12), name
        assert decode_estimate(data, 16).format == name
    assert foreign_plugins_asked == []
    assert ACCEPTED_FORMAT_NAMES.upper().split(", ") == list(ACCEPTED_FORMATS)


def test_what_no_format_claims_is_not_an_image():
    for data in (b"just some text", bytes(64)):
        with pytest.raises(ImageRejected) as error:
            decode(data)
        assert error.value.reason == "not an image"
        assert ACCEPTED_FORMAT_NAMES in error.value.detail
    with pytest.raises(ImageRejected) as error:
        decode_estimate(b"not an image", 16)  # the service answers 415 without decoding
    assert error.value.reason == "not an image"


def test_a_blp_bomb_costs_no_memory():
    data = _blp_holding_a_jpeg(2000)  # 47 kB; 12 MB of RGB bytes once its JPEG is decoded
    tracemalloc.start()
    try:
        with Image.open(io.BytesIO(data)) as image:  # what the workbench did before
            image.load()  # decodes the whole 2000x2000 JPEG for 8x8 pixels
        pillow_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with pytest.raises(ImageRejected, match="format BLP"):
            decode(data)
        with pytest.raises(ImageRejected, match="format BLP"):
            decode_estimate(data, 16)
        workbench_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pillow_peak > 12_000_000  # the file really is a bomb
    assert workbench_peak < 1_000_000


def test_scan_rejects_foreign_formats_with_the_reason(tmp_path, foreign_plugins_asked):
    png = _encoded(Image.new("RGB", (16, 16), (0, 90, 200)), "PNG")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "good.png").write_bytes(png)
    for name, data in foreign_files().items():  # named as images, as an attacker would
        (tmp_path / "a" / f"{name.lower()}.jpg").write_bytes(data)
    (tmp_path / "a" / "listed.blp").write_bytes(foreign_files()["BLP"])
    table = scan(tmp_path, progress="none").set_index("path")
    assert table.loc["a/good.png", "status"] == "ok"
    for name in foreign_files():
        row = table.loc[f"a/{name.lower()}.jpg"]
        assert (row["status"], row["reason"]) == ("rejected", "unsupported format")
        assert row["detail"] == (f"format {name} (by its first bytes) is not one of "
                                 f"{ACCEPTED_FORMAT_NAMES}")
    # a list file names any extension; the content decides
    (tmp_path / "list.txt").write_text("a/listed.blp 0\na/good.png 0\n")
    (tmp_path / "labels.txt").write_text("a\n")
    listed = scan(tmp_path, list_file=tmp_path / "list.txt", labels_file=tmp_path / "labels.txt",
                  progress="none").set_index("path")
    assert listed.loc["a/listed.blp", "reason"] == "unsupported format"
    assert listed.loc["a/good.png", "status"] == "ok"
    assert foreign_plugins_asked == []


class _Decoding:
    """A classifier that decodes as a Classifier does and counts what it decoded."""

    labels, image_size, thread_safe = ["a", "b"], 16, True

    def __init__(self):
        self.decoded = 0

    def predict(self, data, *, top_k=5, tta=False, calibrated=True):
        pixels = load_array(data, 16)
        self.decoded += 1
        return [{"label": "a", "probability": float(pixels.mean() >= 0)}]


def test_serve_answers_415_with_the_list_and_decodes_nothing(foreign_plugins_asked):
    from workbench.deploy.serve import create_app

    classifier = _Decoding()
    client = TestClient(create_app(classifier))
    for name, data in foreign_files().items():
        answer = client.post("/api/predict", files={"file": (f"x.{name.lower()}", data)})
        assert answer.status_code == 415, (name, answer.text)
        assert answer.json() == {
            "error": f"unsupported format: format {name} (by its first bytes) is not one of "
                     f"{ACCEPTED_FORMAT_NAMES}, the formats the server reads",
            "reason": "unsupported format"}
    garbage = client.post("/api/predict", content=b"hello")
    assert garbage.status_code == 415 and garbage.json()["reason"] == "not an image"
    assert f"({ACCEPTED_FORMAT_NAMES})" in garbage.json()["error"]
    assert classifier.decoded == 0 and foreign_plugins_asked == []
    bomb = client.post("/api/predict", content=_blp_holding_a_jpeg(512))
    assert bomb.status_code == 415 and classifier.decoded == 0
    for name, data in accepted_files().items():
        assert client.post("/api/predict", content=data).status_code == 200, name
    assert classifier.decoded == len(accepted_files())


def test_cli_predict_refuses_a_foreign_file_in_one_line(tmp_path, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.deploy import predict

    monkeypatch.setattr(predict.Classifier, "load", classmethod(lambda cls, *a, **k: _Decoding()))
    (tmp_path / "good.png").write_bytes(accepted_files()["PNG"])
    (tmp_path / "bad.jpg").write_bytes(foreign_files()["EPS"])
    assert main(["predict", str(tmp_path), str(tmp_path / "good.png"),
                 str(tmp_path / "bad.jpg")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{tmp_path / 'bad.jpg'}: error: unsupported format: format EPS (by its "
                   f"first bytes) is not one of {ACCEPTED_FORMAT_NAMES}"]
