"""Bad inputs give a DatasetError (a UserError) naming the path and the expected layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import UserError
from sweep.data import DatasetError, load_dataset

try:  # tests/ as a package, or as a plain folder on sys.path
    from tests.test_data_loaders import write_dsprites_npz, write_images
except ImportError:
    from test_data_loaders import write_dsprites_npz, write_images


def raises(name, path, *, mentions=(), **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    assert "Expected" in message, message
    for word in mentions:
        assert word in message, message
    return message


def test_dataset_error_is_a_user_error():
    assert issubclass(DatasetError, UserError)


@pytest.mark.parametrize("name", ["dsprites", "chairs", "faces", "celeba", "folder"])
def test_missing_folder(tmp_path, name):
    raises(name, tmp_path / "nowhere", mentions=("does not exist",))


@pytest.mark.parametrize("name, mentions", [
    ("dsprites", ("no .npz", "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")),
    ("chairs", ("no image files", "rendered_chairs")),
    ("faces", ("basel_face_renders.pth",)),
    ("celeba", ("no image files", "img_align_celeba")),
    ("folder", ("no image files",)),
])
def test_empty_folder(tmp_path, name, mentions):
    (tmp_path / "readme.txt").write_text("not data")
    raises(name, tmp_path, mentions=mentions)


def test_npz_wrong_keys(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 64, 64), np.uint8), labels=np.zeros(4))
    raises("dsprites", tmp_path, mentions=("missing key", "imgs", "latents_classes"))


def test_npz_wrong_image_shape(tmp_path):
    write_dsprites_npz(tmp_path / "d.npz", n=8, imgs=np.zeros((8, 32, 32), np.uint8))
    raises("dsprites", tmp_path / "d.npz", mentions=("[8, 32, 32]", "[N, 64, 64]"))


def test_npz_wrong_latents_shape(tmp_path):
    write_dsprites_npz(tmp_path / "d.npz", n=8, latents_classes=np.zeros((8, 5), np.int64))
    raises("dsprites", tmp_path, mentions=("latents_classes", "[8, 6]"))


def test_npz_not_binary(tmp_path):
    write_dsprites_npz(tmp_path / "d.npz", n=8, imgs=np.full((8, 64, 64), 7, np.uint8))
    raises("dsprites", tmp_path, mentions=("0/1",))


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"definitely not a zip file")
    raises("dsprites", tmp_path, mentions=("not a readable .npz",))


def test_faces_wrong_array_shape(tmp_path):
    np.save(tmp_path / "faces.npy", np.zeros((10, 32, 32), np.uint8))
    raises("faces", tmp_path, mentions=("[10, 32, 32]", "[..., 64, 64]"))


def test_faces_torch_file_that_is_not_a_tensor(tmp_path):
    torch.save({"images": torch.zeros(2, 64, 64, dtype=torch.uint8)}, tmp_path / "basel_face_renders.pth")
    raises("faces", tmp_path, mentions=("holds a dict, not a tensor",))


class Opaque:
    """A pickled object of an arbitrary class: torch.load(weights_only=True) must refuse it."""


def test_faces_torch_file_refused_by_weights_only(tmp_path):
    torch.save(Opaque(), tmp_path / "renders.pth")
    raises("faces", tmp_path, mentions=("weights_only",))


def test_faces_garbage_file(tmp_path):
    (tmp_path / "basel_face_renders.pth").write_bytes(b"\x00garbage" * 10)
    raises("faces", tmp_path, mentions=("not a torch tensor file",))


@pytest.mark.parametrize("name", ["chairs", "celeba", "folder"])
def test_unreadable_image_file(tmp_path, name):
    sub = {"chairs": "rendered_chairs/c1/renders", "celeba": "img_align_celeba", "folder": "imgs"}[name]
    write_images(tmp_path / sub, ["000001.jpg", "000002.jpg"], (178, 218))
    bad = tmp_path / sub / "000003.jpg"
    bad.write_bytes(b"this is not a jpeg")
    message = raises(name, tmp_path, mentions=("not a readable image",), workers=2)
    assert str(bad) in message


def test_truncated_image_file(tmp_path):
    write_images(tmp_path, ["a.png"], (64, 64))
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    raises("folder", tmp_path, mentions=("a.png",))


def test_image_smaller_than_crop(tmp_path):
    write_images(tmp_path / "img_align_celeba", ["1.jpg"], (100, 100))
    raises("celeba", tmp_path, mentions=("100x100", "140x140"))


def test_mixed_colour_modes_need_channels(tmp_path):
    write_images(tmp_path, ["g.png"], (64, 64), mode="L")
    write_images(tmp_path, ["c.png"], (64, 64), mode="RGB")
    raises("folder", tmp_path, mentions=("mixes greyscale", "channels=1"))
    assert load_dataset("folder", tmp_path, channels=3).channels == 3


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "/data")
    for name in ("dsprites_generated", "dsprites", "chairs", "faces", "celeba", "folder"):
        assert name in str(info.value)


def test_real_dataset_without_data_dir():
    with pytest.raises(DatasetError, match="needs data_dir.*Expected"):
        load_dataset("chairs")


@pytest.mark.parametrize("kwargs", [
    dict(size=0), dict(size=2.5), dict(held_out=1.0), dict(held_out=-0.1),
    dict(channels=2), dict(likelihood="poisson"), dict(crop=140), dict(channels=3),
])
def test_bad_arguments(kwargs):
    with pytest.raises(DatasetError):
        load_dataset("dsprites_generated", **kwargs)


def test_size_larger_than_folder(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"], (64, 64))
    with pytest.raises(DatasetError, match="larger than the 2 images"):
        load_dataset("folder", tmp_path, size=3)


def test_bad_crop_value(tmp_path):
    write_images(tmp_path, ["a.png"], (64, 64))
    with pytest.raises(DatasetError, match="crop"):
        load_dataset("folder", tmp_path, crop="middle")
    Image.open(tmp_path / "a.png").close()
