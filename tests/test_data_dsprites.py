"""Generated dSprites: the grid, the rasteriser's geometry, subsets by seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweep.data import DatasetError, ImageDataset, load_dataset, render_dsprites
from sweep.data import dsprites as ds


def images_of(classes) -> np.ndarray:
    """0/1 images [n, 64, 64] of grid points given as factor classes."""
    packed = ds.generate_dsprites(ds.grid_index(np.atleast_2d(classes)))
    return np.unpackbits(packed, axis=1).reshape(-1, 64, 64)


def area(classes) -> np.ndarray:
    return images_of(classes).reshape(-1, 4096).sum(axis=1)


def centroid(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(image)
    return cols.mean(), rows.mean()


def test_grid_matches_published_factor_grid():
    assert ds.GRID_SIZE == 737_280 == 3 * 6 * 40 * 32 * 32
    assert ds.FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert ds.FACTOR_SIZES == (3, 6, 40, 32, 32)
    shape, scale, orientation, pos_x, pos_y = ds.FACTOR_VALUES
    np.testing.assert_array_equal(shape, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(scale, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # Published convention: 40 values in [0, 2π] with both ends, step 2π/39 = 0.16110732.
    np.testing.assert_allclose(orientation[:3], [0.0, 0.16110732, 0.32221463], atol=1e-8)
    assert orientation[-1] == pytest.approx(2 * np.pi)
    np.testing.assert_allclose(pos_x, np.linspace(0, 1, 32))
    np.testing.assert_allclose(pos_y[1], 0.03225806, atol=1e-8)


def test_index_factor_mapping_is_the_published_order():
    idx = np.arange(ds.GRID_SIZE)
    classes = ds.factor_classes(idx)
    np.testing.assert_array_equal(ds.grid_index(classes), idx)
    # posY varies fastest, shape slowest; bases as in the published metadata.
    np.testing.assert_array_equal(classes[1], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(classes[32], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(classes[1024], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(classes[40960], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(classes[245760], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(classes[-1], [2, 5, 39, 31, 31])
    values = ds.factor_values(classes[[0, -1]])
    np.testing.assert_allclose(values[-1], [3.0, 1.0, 2 * np.pi, 1.0, 1.0])


def test_fast_generator_equals_direct_rasteriser():
    rng = np.random.default_rng(1)
    idx = rng.choice(ds.GRID_SIZE, 1500, replace=False)
    classes = ds.factor_classes(idx)
    values = ds.factor_values(classes)
    direct = render_dsprites(classes[:, 0], values[:, 1], values[:, 2], values[:, 3], values[:, 4])
    fast = np.unpackbits(ds.generate_dsprites(idx), axis=1).reshape(-1, 64, 64)
    np.testing.assert_array_equal(fast, direct)
    assert direct.dtype == np.uint8 and set(np.unique(direct)) <= {0, 1}


def test_area_order_square_ellipse_heart_at_every_scale():
    for k in range(6):
        mean = [
            area([[s, k, o, 16, 16] for o in range(40)]).mean() for s in range(3)
        ]
        assert mean[0] > mean[1] > mean[2] > 0, (k, mean)


def test_scale_increases_area():
    for s in range(3):
        means = [area([[s, k, o, 10, 20] for o in range(0, 40, 3)]).mean() for k in range(6)]
        assert all(a < b for a, b in zip(means, means[1:])), (s, means)


def test_square_size_at_scale_one_is_about_a_third_of_the_image():
    image = images_of([0, 5, 0, 16, 16])[0]
    cols = np.nonzero(image.any(axis=0))[0]
    side = cols.max() - cols.min() + 1
    assert 64 / 4 <= side <= 64 / 2


def test_centroid_follows_position():
    for s in range(3):
        xs = [centroid(images_of([s, 3, 7, p, 12])[0])[0] for p in range(32)]
        ys = [centroid(images_of([s, 3, 7, 12, p])[0])[1] for p in range(32)]
        assert all(a < b for a, b in zip(xs, xs[1:])), xs
        assert all(a < b for a, b in zip(ys, ys[1:])), ys  # posY grows downwards (row index)
        assert xs[-1] - xs[0] == pytest.approx(31, abs=1e-9)  # one pixel per position step


def test_rotation_moves_pixels():
    for s in (1, 2):  # ellipse and heart differ at every non-trivial angle
        images = images_of([[s, 5, o, 16, 16] for o in range(40)])
        distinct = {im.tobytes() for im in images[:39]}
        # The ellipse has 180° symmetry; the heart has none.
        assert len(distinct) >= (19 if s == 1 else 39)
        assert not np.array_equal(images[0], images[5])
    # Published convention: orientation classes 0 and 39 are the same angle (0 and 2π).
    both = images_of([[2, 5, 0, 16, 16], [2, 5, 39, 16, 16]])
    np.testing.assert_array_equal(both[0], both[1])


def test_every_sprite_stays_inside_the_frame():
    sprites = ds.sprite_patches(np.arange(3 * 6 * 40))
    assert sprites.shape == (720, 32, 32)
    # The patch's border row/column 0 is never touched, so no shift can push a sprite out.
    assert not sprites[:, 0, :].any() and not sprites[:, :, 0].any()
    assert sprites.reshape(720, -1).any(axis=1).all()


def test_subset_by_seed_is_deterministic_and_generates_only_what_it_needs(monkeypatch):
    drawn = []
    original = ds.sprite_patches
    monkeypatch.setattr(ds, "sprite_patches", lambda ids: (drawn.append(len(ids)), original(ids))[1])
    a = load_dataset("dsprites_generated", size=300, seed=3)
    b = load_dataset("dsprites_generated", size=300, seed=3)
    c = load_dataset("dsprites_generated", size=300, seed=4)
    assert len(a) == 300 and isinstance(a, ImageDataset)
    assert torch.equal(a.origin_index, b.origin_index) and torch.equal(a.data, b.data)
    assert not torch.equal(a.origin_index, c.origin_index)
    assert max(drawn) <= 300 < 720  # at most one sprite per image, never the whole grid
    # Images and factors agree with the grid.
    idx = a.origin_index.numpy()
    np.testing.assert_array_equal(a.factors, ds.factor_classes(idx))
    np.testing.assert_array_equal(
        a.batch(torch.arange(300)).numpy().reshape(300, 64, 64),
        np.unpackbits(ds.generate_dsprites(idx), axis=1).reshape(300, 64, 64),
    )


def test_generated_dataset_contract():
    d = load_dataset("dsprites_generated", size=2000, seed=0, held_out=0.25)
    assert (d.name, d.channels, d.image_size, d.likelihood, d.packed) == (
        "dsprites_generated", 1, 64, "bernoulli", True)
    assert d.size == len(d) == 2000 and d.pixel_range == (0.0, 1.0)
    assert d.factor_names == ds.FACTOR_NAMES and d.factor_sizes == ds.FACTOR_SIZES
    assert d.factors.shape == (2000, 5) and d.factors.dtype == np.int64
    assert len(d.held_out_indices) == 500 and len(d.train_indices) == 1500
    assert d.data.dtype == torch.uint8 and d.data.shape == (2000, 512)
    x = d.batch(d.held_out_indices[:7])
    assert x.shape == (7, 1, 64, 64) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}


def test_full_grid_is_generated_packed():
    packed = ds.generate_dsprites()
    assert packed.shape == (737_280, 512) and packed.dtype == np.uint8
    assert packed.nbytes == 737_280 * 4096 // 8
    idx = np.array([0, 1, 12345, 400_000, 737_279])
    np.testing.assert_array_equal(packed[idx], ds.generate_dsprites(idx))


def test_size_larger_than_grid_is_an_error():
    with pytest.raises(DatasetError, match="737280"):
        load_dataset("dsprites_generated", size=800_000)
