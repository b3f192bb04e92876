"""``SplitFolder``: where the decoded image cache goes, and how large it is."""

import os

import numpy as np

import tiny_data
from workbench.data import images
from workbench.data.splitdir import CACHE_VARIABLE, SplitFolder

SIZE = 12


def cached_files(folder):
    return sorted(path.name for path in folder.glob("images-*.npy")) if folder.is_dir() else []


def test_the_cache_is_in_the_split_folder_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_VARIABLE, raising=False)
    splits = tiny_data.write_splits(tmp_path, per_class=4, counts=(2, 1, 1))
    data = SplitFolder(splits).load(image_size=SIZE, progress="none")
    assert SplitFolder(splits).cache_dir == splits / "cache"
    assert len(cached_files(splits / "cache")) == 3  # train, val, test
    for name, array in data.images.items():  # N x size x size x 3 bytes per split
        assert array.nbytes == len(SplitFolder(splits).paths(name)) * SIZE * SIZE * 3
        assert os.path.getsize(array.filename) >= array.nbytes


def test_workbench_cache_dir_gives_each_split_folder_a_cache_of_its_own(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    monkeypatch.setenv(CACHE_VARIABLE, str(scratch))
    # two split folders of the same name, of different images (4 and 5 per class)
    first = tiny_data.write_splits(tmp_path / "a", per_class=4, counts=(2, 1, 1))
    second = tiny_data.write_splits(tmp_path / "b", per_class=5, counts=(3, 1, 1))
    folders = [SplitFolder(first), SplitFolder(second)]
    assert folders[0].cache_dir != folders[1].cache_dir
    assert {folder.cache_dir.parent for folder in folders} == {scratch}
    assert folders[0].cache_dir.name.startswith("splits-")

    for folder in folders:
        data = folder.load(image_size=SIZE, progress="none")
        assert len(cached_files(folder.cache_dir)) == 3
        assert not (folder.path / "cache").exists()  # nothing written beside the splits
        first_test = images.load_array(folder.image_path("test", 0), SIZE, "squash")
        np.testing.assert_array_equal(data.images["test"][0], first_test)

    # the same folder named another way finds the same cache, and reuses it
    monkeypatch.chdir(tmp_path / "a")
    again = SplitFolder("splits")
    assert again.cache_dir == folders[0].cache_dir
    before = {path: path.stat().st_mtime_ns for path in again.cache_dir.iterdir()}
    again.load(image_size=SIZE, progress="none")
    assert {path: path.stat().st_mtime_ns for path in again.cache_dir.iterdir()} == before


def test_a_replaced_split_never_uses_the_old_splits_cache(tmp_path, monkeypatch):
    """The cache is keyed by the images listed (and their size and time), not by the folder:
    after the split is replaced by one of other images, even a cache kept outside the split
    folder ($WORKBENCH_CACHE_DIR, named by the folder's path) is not reused."""
    from workbench.data.split import prepare

    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "scratch"))
    splits = tiny_data.write_splits(tmp_path, per_class=5, counts=(2, 1, 2))
    old = SplitFolder(splits)
    old_test = old.load(image_size=SIZE, progress="none").images["test"]
    old_paths = old.paths("test")
    prepare(tmp_path / "data", splits, counts=(2, 1, 2), seed=1, overwrite=True,
            progress="none")
    new = SplitFolder(splits)
    assert new.cache_dir == old.cache_dir and new.paths("test") != old_paths
    new_test = new.load(image_size=SIZE, progress="none").images["test"]
    assert len(cached_files(new.cache_dir)) > 3  # built anew beside the old split's
    for index in range(len(new_test)):
        expected = images.load_array(new.image_path("test", index), SIZE, "squash")
        np.testing.assert_array_equal(new_test[index], expected)
    assert not np.array_equal(np.asarray(new_test), np.asarray(old_test))
