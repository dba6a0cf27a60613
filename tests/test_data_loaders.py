"""Every real-data loader on small files written in the published form, and the dataset type."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sweep.data import ImageDataset, dataset_names, load_dataset
from sweep.data import dsprites as ds


# ---------------------------------------------------------------------------------- writers
def write_dsprites_npz(path, n=96, seed=0, imgs=None, **override):
    """A small .npz with the official keys (and the pickled 'metadata' the official one has)."""
    idx = np.sort(np.random.default_rng(seed).choice(ds.GRID_SIZE, n, replace=False))
    classes = ds.factor_classes(idx)
    if imgs is None:
        imgs = np.unpackbits(ds.generate_dsprites(idx), axis=1).reshape(n, 64, 64)
    arrays = dict(
        imgs=imgs,
        latents_values=np.column_stack([np.ones(n), ds.factor_values(classes)]),
        latents_classes=np.column_stack([np.zeros(n, dtype=np.int64), classes]),
        metadata=np.array({"latents_names": ("color",) + ds.FACTOR_NAMES}, dtype=object),
    )
    arrays.update(override)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return idx, imgs


def write_images(folder, names, size, mode="RGB", seed=0, fmt=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    for name in names:
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / name, fmt)


def check_dataset(d: ImageDataset, name, n, channels, likelihood, held_out=0.1):
    assert d.name == name and len(d) == d.size == n
    assert (d.channels, d.image_size, d.likelihood, d.pixel_range) == (channels, 64, likelihood, (0.0, 1.0))
    assert d.data.dtype == torch.uint8
    train, held = set(d.train_indices.tolist()), set(d.held_out_indices.tolist())
    assert not train & held and train | held == set(range(n))
    assert len(held) == max(1, round(held_out * n))
    x = d.batch(d.train_indices[:5])
    assert x.shape == (min(5, len(train)), channels, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    g = torch.Generator().manual_seed(0)
    b = d.sample_batch(g, 16)
    assert b.shape == (16, channels, 64, 64)


# ---------------------------------------------------------------------------------- dsprites
def test_dsprites_npz_official_name(tmp_path):
    idx, imgs = write_dsprites_npz(tmp_path / ds.OFFICIAL_FILE)
    (tmp_path / "notes.npz").write_bytes(b"")  # the official name wins over other .npz files
    d = load_dataset("dsprites", tmp_path, held_out=0.25)
    check_dataset(d, "dsprites", 96, 1, "bernoulli", held_out=0.25)
    assert d.packed and d.factor_names == ds.FACTOR_NAMES
    np.testing.assert_array_equal(d.factors, ds.factor_classes(idx))  # 'color' column dropped
    np.testing.assert_array_equal(d.batch(slice(None)).numpy().reshape(-1, 64, 64), imgs)
    np.testing.assert_allclose(d.factor_values[:, 1], ds.FACTOR_VALUES[1][d.factors[:, 1]])


def test_dsprites_npz_any_single_file_and_subset(tmp_path):
    _, imgs = write_dsprites_npz(tmp_path / "mine.npz", n=64)
    d = load_dataset("dsprites", tmp_path, size=20, seed=5)
    assert len(d) == 20
    chosen = d.origin_index.numpy()
    np.testing.assert_array_equal(d.uint8(slice(None)).numpy().reshape(-1, 64, 64) // 255, imgs[chosen])
    # Also by file path, with a chunk size that forces several streamed chunks.
    packed, classes, values, sizes, n, subset = ds.load_npz(tmp_path / "mine.npz", lambda n: None, chunk=7)
    assert n == 64 and subset is None
    np.testing.assert_array_equal(np.unpackbits(packed, axis=1).reshape(-1, 64, 64), imgs)
    again = load_dataset("dsprites", tmp_path / "mine.npz", size=20, seed=5)
    assert torch.equal(again.data, d.data)


# ---------------------------------------------------------------------------------- faces
def test_faces_torch_tensor_in_published_form(tmp_path):
    renders = torch.randint(0, 256, (2, 3, 2, 2, 64, 64), dtype=torch.uint8)
    torch.save(renders, tmp_path / "basel_face_renders.pth")
    d = load_dataset("faces", tmp_path)
    check_dataset(d, "faces", 24, 1, "gaussian")
    assert not d.packed
    assert d.factor_names == ("identity", "azimuth", "elevation", "lighting")
    assert d.factor_sizes == (2, 3, 2, 2)
    i = 17
    c = d.factors[i]
    np.testing.assert_array_equal(d.uint8([i])[0, 0].numpy(), renders[tuple(c)].numpy())
    assert torch.allclose(d.batch([i])[0, 0], renders[tuple(c)].float() / 255)


def test_faces_npy_float_array(tmp_path):
    array = np.random.default_rng(0).random((10, 64, 64)).astype(np.float32)
    np.save(tmp_path / "faces.npy", array)
    d = load_dataset("faces", tmp_path / "faces.npy", size=8, seed=1, held_out=0.25)
    check_dataset(d, "faces", 8, 1, "gaussian", held_out=0.25)
    assert d.factors is None and d.factor_names == ()
    j = int(d.origin_index[3])
    np.testing.assert_allclose(d.batch([3])[0, 0].numpy(), array[j], atol=0.5 / 255 + 1e-6)


def test_faces_npy_uint8_is_read_into_memory(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (6, 64, 64), dtype=np.uint8)
    np.save(tmp_path / "faces.npy", array)
    d = load_dataset("faces", tmp_path)
    assert d.data.numpy().flags.writeable and not isinstance(d.data.numpy().base, np.memmap)
    (tmp_path / "faces.npy").unlink()
    np.testing.assert_array_equal(d.uint8(slice(None)).numpy()[:, 0], array)


def test_faces_npz_with_channel_axis(tmp_path):
    np.savez(tmp_path / "r.npz", images=np.zeros((3, 4, 1, 64, 64), dtype=np.uint8) + 7)
    d = load_dataset("faces", tmp_path)
    assert len(d) == 12 and d.factor_names == ("factor_0", "factor_1") and d.factor_sizes == (3, 4)


# ---------------------------------------------------------------------------------- folders
def test_chairs_published_tree(tmp_path):
    root = tmp_path / "rendered_chairs"
    for chair in ("1a6f615e8b1b5ae4dbbc9440457e303e", "1a8bbf2994788e2743e99e0cae970928"):
        names = [f"image_{k:03d}_p020_t{k * 11:03d}_r096.png" for k in range(3)]
        write_images(root / chair / "renders", names, (600, 600), seed=len(chair) + ord(chair[1]))
    (root / "all_chair_names.mat").write_bytes(b"MATLAB 5.0 MAT-file")  # not an image: ignored
    d = load_dataset("chairs", tmp_path, held_out=0.34)
    check_dataset(d, "chairs", 6, 1, "gaussian", held_out=0.34)
    assert d.item_names[0].endswith("renders/image_000_p020_t000_r096.png")
    assert d.info["sizes"] == {"600x600": 6}
    assert d.factors is None


def test_celeba_aligned_jpegs_centre_cropped(tmp_path):
    folder = tmp_path / "img_align_celeba"
    write_images(folder, [f"{k:06d}.jpg" for k in range(1, 9)], (178, 218))
    # A face whose centre 140 x 140 is white and border black: the crop keeps only white.
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    pixels[39:179, 19:159] = 255
    Image.fromarray(pixels).save(folder / "000009.jpg", quality=95)
    d = load_dataset("celeba", tmp_path, held_out=0.2)
    check_dataset(d, "celeba", 9, 3, "gaussian", held_out=0.2)
    last = d.batch([8])[0]
    assert float(last[:, 2:-2, 2:-2].min()) > 0.9
    assert d.info["crop"] == 140


def test_generic_folder_grey_colour_and_options(tmp_path):
    write_images(tmp_path / "grey", ["a.png", "b.bmp"], (40, 30), mode="L")
    write_images(tmp_path / "grey" / "sub", ["c.png"], (100, 120), mode="L")
    d = load_dataset("folder", tmp_path / "grey", held_out=0.0)
    assert (len(d), d.channels, d.likelihood) == (3, 1, "gaussian")
    assert len(d.held_out_indices) == 0 and len(d.train_indices) == 3
    assert d.item_names == ("a.png", "b.bmp", "sub/c.png")
    assert d.info["distinct_sizes"] == 2

    write_images(tmp_path / "colour", ["x.png", "y.jpg", "z.png"], (64, 64), mode="RGB")
    write_images(tmp_path / "colour", ["w.png"], (80, 64), mode="RGBA")
    c = load_dataset("folder", tmp_path / "colour", channels=3, crop="none")
    check_dataset(c, "folder", 4, 3, "gaussian")
    # A 64 x 64 PNG with crop 'none' comes through unchanged.
    x = np.asarray(Image.open(tmp_path / "colour" / "x.png"))
    i = c.item_names.index("x.png")
    np.testing.assert_array_equal(c.uint8([i])[0].permute(1, 2, 0).numpy(), x)
    grey = load_dataset("folder", tmp_path / "colour", channels=1)
    assert grey.channels == 1


def test_binary_folder_is_bernoulli_and_packed(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray((rng.random((64, 64)) > 0.5).astype(np.uint8) * 255).save(tmp_path / f"{k}.png")
    d = load_dataset("folder", tmp_path)
    assert d.likelihood == "bernoulli" and d.packed and d.data.shape == (5, 512)
    assert set(torch.unique(d.batch(slice(None))).tolist()) == {0.0, 1.0}
    assert load_dataset("folder", tmp_path, likelihood="gaussian").likelihood == "gaussian"


# ---------------------------------------------------------------------------------- dataset type
def test_split_sampling_and_iteration():
    d = load_dataset("dsprites_generated", size=500, seed=2, held_out=0.2)
    e = load_dataset("dsprites_generated", size=500, seed=2, held_out=0.2)
    assert torch.equal(d.train_indices, e.train_indices)
    a = d.sample_indices(torch.Generator().manual_seed(9), 64)
    b = d.sample_indices(torch.Generator().manual_seed(9), 64)
    assert torch.equal(a, b)
    assert set(a.tolist()) <= set(d.train_indices.tolist())
    held = d.sample_indices(torch.Generator().manual_seed(9), 64, split="held_out")
    assert set(held.tolist()) <= set(d.held_out_indices.tolist())
    batches = list(d.iter_batches(30, split="held_out"))
    assert sum(len(x) for x in batches) == 100
    assert torch.equal(torch.cat(batches), d.batch(d.held_out_indices))
    np.testing.assert_array_equal(d.factors_of(d.held_out_indices[:3]), d.factors[d.held_out_indices[:3].numpy()])
    assert "dsprites_generated" in repr(d)


def test_dataset_names():
    assert dataset_names() == ("dsprites_generated", "dsprites", "chairs", "faces", "celeba", "folder")
