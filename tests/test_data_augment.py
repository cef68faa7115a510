"""Augmentation lists (docs/semantics.md), incl. tensorpack's imgaug_test.py on our lists."""

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorpack.dataflow import imgaug

from epsresnet_tf.data import augment

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
needs_cifar = pytest.mark.skipif(
    not CIFAR.is_dir(), reason=f"the real CIFAR-10 subset is not at {CIFAR} on this machine"
)


#: The AlexNet PCA of imagenetEpsilonResnet.py:216-222, in RGB order (the script reverses
#: both for its BGR images), its eigenvalues ×255 for uint8 pixels (docs/semantics.md §10).
ALEXNET_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045], np.float32) * 255.0
ALEXNET_EIGVEC = np.asarray(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    np.float32,
)


def _img(shape=(32, 32, 3), seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


LISTS = [
    ("cifar10", True, (32, 32, 3), (32, 32, 3)),
    ("svhn", True, (32, 32, 3), (32, 32, 3)),
    ("imagenet", True, (90, 120, 3), (224, 224, 3)),
    ("imagenet", False, (300, 260, 3), (224, 224, 3)),
]


@pytest.mark.parametrize("name,train,in_shape,out_shape", LISTS)
def test_ported_imgaug_transform_replays_and_keeps_input(name, train, in_shape, out_shape):
    # Port of tensorpack imgaug_test.ImgAugTest.test_augmentors / test_legacy_usage.
    augs = augment.augmentor_list(name, train)
    augment.reseed(augs, (7,))
    img = _img(in_shape)
    orig = img.copy()
    tfms = augs.get_transform(img)
    new1 = tfms.apply_image(img)
    np.testing.assert_array_equal(img, orig)  # the input is not modified in place
    new2 = tfms.apply_image(orig)
    assert np.allclose(new1, new2) and new1.shape == out_shape
    assert str(augs) and str(tfms)  # printing works
    newimg, params = augs.augment_return_params(img)  # legacy usage
    assert np.allclose(newimg, augs.augment_with_params(orig, params))
    assert newimg.shape == out_shape


@pytest.mark.parametrize("name,train,in_shape,out_shape", LISTS)
def test_reseed_is_deterministic_and_key_dependent(name, train, in_shape, out_shape):
    augs = augment.augmentor_list(name, train)
    img = _img(in_shape, seed=1)
    outs = []
    for key in [(1, 2, 3), (1, 2, 3), (1, 2, 4)]:
        augment.reseed(augs, key)
        outs.append(np.stack([augment.augment_image(augs, img) for _ in range(4)]))
    np.testing.assert_array_equal(outs[0], outs[1])
    if train:
        assert not np.array_equal(outs[0], outs[2])


def test_cifar_crop_is_window_of_zero_padded_original_and_flip_is_flip():
    augs = augment.augmentor_list("cifar10", True)
    augment.reseed(augs, (0,))
    img = _img(seed=2)
    padded = np.zeros((40, 40, 3), np.uint8)
    padded[4:36, 4:36] = img
    offsets, flips = set(), 0
    for _ in range(300):
        out = augment.augment_image(augs, img)
        hits = [
            (dy, dx, f)
            for dy in range(8)
            for dx in range(8)
            for f in (0, 1)
            if np.array_equal(
                out,
                (
                    padded[dy : dy + 32, dx : dx + 32][:, ::-1]
                    if f
                    else padded[dy : dy + 32, dx : dx + 32]
                ),
            )
        ]
        assert hits, "augmented image is not a (flipped) window of the padded original"
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert 100 < flips < 200  # Flip(horiz) with p = 0.5
    assert len(offsets) > 40  # RandomCrop reaches most of the 64 offsets
    dys, dxs = {o[0] for o in offsets}, {o[1] for o in offsets}
    # Pad 4 each side; tensorpack 0.2.0's randint(diff) stops at 7 (0.11 would reach 8).
    assert min(dys) == min(dxs) == 0 and max(dys) == max(dxs) == 7


def _cifar_subset_images(n):
    with open(CIFAR / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return np.asarray(d["data"][:n]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@needs_cifar
def test_random_crop_offsets_are_0_to_7_on_real_cifar_images():
    # tensorpack 0.2.0: h0 = 0 if diff == 0 else rng.randint(diff); 40 - 32 = 8 -> 0..7.
    # The offset of each crop is recovered from the pixels of real CIFAR-10 images.
    imgs = _cifar_subset_images(60)
    paste = imgaug.CenterPaste((40, 40))
    crop = augment.augmentor_list("cifar10", True).augmentors[1]
    assert isinstance(crop, augment.RandomCrop020)
    crop.rng = np.random.RandomState(0)
    dys, dxs = [], []
    for k in range(2000):
        padded = paste.augment(imgs[k % len(imgs)])
        out = crop.augment(padded)
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(out, padded[dy : dy + 32, dx : dx + 32])
        ]
        assert hits
        dys.append(min(h[0] for h in hits))
        dxs.append(min(h[1] for h in hits))
    assert min(dys) == min(dxs) == 0 and max(dys) == max(dxs) == 7
    assert set(dys) == set(dxs) == set(range(8))  # every one of 0..7 is drawn
    # 0.11's own RandomCrop does reach 8 with the same number of draws.
    stock = imgaug.RandomCrop((32, 32))
    stock.rng = np.random.RandomState(0)
    corners = [stock.get_transform(np.zeros((40, 40, 3), np.uint8)) for _ in range(2000)]
    assert max(t.y0 for t in corners) == 8
    # The draw is numpy's: same RandomState, same corners as randint(8) row then column.
    crop.rng, ref = np.random.RandomState(5), np.random.RandomState(5)
    for _ in range(50):
        t = crop.get_transform(np.zeros((40, 40, 3), np.uint8))
        assert (t.y0, t.x0) == (ref.randint(8), ref.randint(8))


def test_svhn_list_is_spec():
    augs = augment.augmentor_list("svhn", True).augmentors
    kinds = [type(a).__name__ for a in augs]
    assert kinds == [
        "CenterPasteFloat",
        "Brightness",
        "Contrast",
        "GaussianDeform",
        "RandomCrop020",
    ]
    assert augs[1].clip and augs[2].clip  # 0.2.0's defaults: clip to [0, 255]
    assert augs[0].background_shape == (40, 40) and augs[1].delta == 10
    assert augs[2].factor_range == (0.8, 1.2) and augs[4].crop_shape == (32, 32)
    assert augs[3].anchors == [(0.2, 0.2), (0.2, 0.8), (0.8, 0.8), (0.8, 0.2)]
    assert augs[3].shape == (40, 40) and augs[3].sigma == 0.2 and augs[3].randrange == 3
    assert augment.augmentor_list("svhn", False) is None
    assert augment.augmentor_list("cifar100", False) is None
    assert augment.augmentor_list("mnist", True) is None


def test_imagenet_train_list_and_random_order():
    augs = augment.augmentor_list("imagenet", True).augmentors
    # No ToFloat32: the colour jitter runs on uint8, as in tensorpack 0.2.0 (was float32).
    assert [type(a).__name__ for a in augs] == [
        "RandomAreaCropResize",
        "RandomOrderAug",
        "Clip",
        "Flip",
        "ToUint8",
    ]
    crop, jitter, clip, flip, _ = augs
    assert crop.crop_area_fraction == (0.08, 1.0) and crop.aspect_ratio_range == (0.75, 1.333)
    assert crop.target_shape == 224 and crop.interp == cv2.INTER_CUBIC
    bright, contrast, sat, light = jitter.aug_lists
    assert [type(a).__name__ for a in jitter.aug_lists] == [
        "Brightness",
        "Contrast",
        "Saturation",
        "Lighting",
    ]
    assert bright.delta == 30 and not bright.clip  # the authors' clip=False (moot on uint8)
    assert contrast.factor_range == (0.8, 1.2) and not contrast.clip
    assert sat.alpha == 0.4 and sat.rgb and not sat.clip  # images are RGB here
    assert type(sat) is imgaug.Saturation  # default: 0.11's uint8 clipping
    assert light.std == 0.1 and not light.clip  # 0.2.0: clip only uint8 input
    np.testing.assert_allclose(light.eigval, ALEXNET_EIGVAL, rtol=1e-6)
    np.testing.assert_allclose(light.eigvec, ALEXNET_EIGVEC, rtol=1e-6)
    assert (clip.min, clip.max) == (0, 255)
    assert flip.horiz and flip.prob == 0.5
    # The AlexNet PCA basis is orthonormal.
    v = ALEXNET_EIGVEC
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=2e-3)
    out = augment.augment_image(augment.augmentor_list("imagenet", True), _img((80, 100, 3)))
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)


def _authors_crop_window(rng, h, w):
    """The authors' ImageNet ``Resize._augment`` (imagenetEpsilonResnet.py), drawing from
    `rng` in the same order: the window (y1, x1, hh, ww), or None for the whole image."""
    for _ in range(10):
        target_area = rng.uniform(0.08, 1.0) * h * w
        aspect = rng.uniform(0.75, 1.333)
        ww = int(np.sqrt(target_area * aspect))
        hh = int(np.sqrt(target_area / aspect))
        if rng.uniform() < 0.5:
            ww, hh = hh, ww
        if hh <= h and ww <= w:
            x1 = 0 if w == ww else rng.randint(0, w - ww)
            y1 = 0 if h == hh else rng.randint(0, h - hh)
            return y1, x1, hh, ww
    return None


@pytest.mark.parametrize("shape", [(120, 160), (500, 375), (64, 64), (40, 300)])
def test_random_area_crop_draws_the_authors_windows(shape):
    aug = augment.RandomAreaCropResize(224)
    img = _img(shape + (3,), seed=7)
    for seed in range(40):
        aug.rng = np.random.RandomState(seed)
        t = aug.get_transform(img)
        want = _authors_crop_window(np.random.RandomState(seed), *shape)
        if want is None:
            assert not hasattr(t, "tfms")
        else:
            c = t.tfms[0]
            assert (c.y0, c.x0, c.h, c.w) == want


def test_random_area_crop_window_and_fallback():
    aug = augment.RandomAreaCropResize(224)
    aug.rng = np.random.RandomState(0)
    img = _img((120, 160, 3), seed=3)
    for _ in range(20):
        t = aug.get_transform(img)
        crop = t.tfms[0]
        area = crop.h * crop.w / (120 * 160)
        assert 0.08 * 0.98 <= area <= 1.0 + 1e-9
        assert 0.74 <= crop.w / crop.h <= 1.36 or 0.74 <= crop.h / crop.w <= 1.36
        expect = cv2.resize(
            img[crop.y0 : crop.y0 + crop.h, crop.x0 : crop.x0 + crop.w],
            (224, 224),
            interpolation=cv2.INTER_CUBIC,
        )
        np.testing.assert_array_equal(t.apply_image(img), expect)
    # A 1x60 strip admits no crop of aspect 3/4..4/3 with area >= 8 %: whole-image resize.
    strip = _img((1, 60, 3), seed=4)
    out = aug.get_transform(strip).apply_image(strip)
    np.testing.assert_array_equal(out, cv2.resize(strip, (224, 224), interpolation=cv2.INTER_CUBIC))


def test_imagenet_val_shortest_edge_256_centre_crop_224():
    augs = augment.augmentor_list("imagenet", False)
    img = _img((300, 400, 3), seed=5)
    out = augment.augment_image(augs, img)
    big = cv2.resize(img, (341, 256), interpolation=cv2.INTER_LINEAR)  # 400 * 256 / 300
    y0, x0 = (256 - 224) // 2, (341 - 224) // 2
    np.testing.assert_array_equal(out, big[y0 : y0 + 224, x0 : x0 + 224])


def test_photometric_augmentors_match_numpy():
    # The tensorpack augmentors we rely on do what docs/semantics.md names, per independent numpy.
    img = _img((8, 8, 3), seed=6).astype(np.float32)
    b = imgaug.Brightness(10)
    b.rng = np.random.RandomState(1)
    delta = np.random.RandomState(1).uniform(-10, 10)
    np.testing.assert_allclose(b.augment(img), np.clip(img + delta, 0, 255), rtol=1e-5)
    c = imgaug.Contrast((0.8, 1.2))
    c.rng = np.random.RandomState(2)
    r = np.float32(np.random.RandomState(2).uniform(0.8, 1.2))
    m = img.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(c.augment(img), np.clip(img * r + m * (1 - r), 0, 255), rtol=1e-5)


def test_lighting_and_saturation_match_numpy():
    img = _img((6, 7, 3), seed=8).astype(np.float32)
    light = augment.augmentor_list("imagenet", True).augmentors[1].aug_lists[3]
    light.rng = np.random.RandomState(3)
    alpha = np.random.RandomState(3).randn(3) * 0.1
    shift = ALEXNET_EIGVEC @ (alpha * ALEXNET_EIGVAL)  # AlexNet PCA noise
    np.testing.assert_allclose(light.augment(img), img + shift, rtol=1e-5, atol=1e-3)
    sat = augment.augmentor_list("imagenet", True).augmentors[1].aug_lists[2]
    sat.rng = np.random.RandomState(4)
    v = 1 + np.random.RandomState(4).uniform(-0.4, 0.4)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(
        sat.augment(img), img * v + grey[..., None] * (1 - v), rtol=1e-4, atol=1e-2
    )


def test_ported_imgaug_coords_follow_the_pixels():
    # Port of the apply_coords part of tensorpack's imgaug_test (test_augmentors,
    # test_legacy_usage), with the check it leaves out: a pixel's centre, mapped by the
    # transform, lands where that pixel's value went. tensorpack's CenterPaste and
    # GaussianDeform have no coordinate transform, so the CIFAR list is taken after its
    # CenterPaste (on the padded image) and SVHN's is not covered.
    crop_flip = imgaug.AugmentorList(augment.augmentor_list("cifar10", True).augmentors[1:])
    img = _img((40, 40, 3), seed=9)
    rng = np.random.default_rng(0)
    for key in range(20):
        augment.reseed(crop_flip, (key,))
        tfms = crop_flip.get_transform(img)
        out = tfms.apply_image(img)
        ys, xs = rng.integers(0, 40, 60), rng.integers(0, 40, 60)
        coords = np.stack([xs + 0.5, ys + 0.5], 1).astype(np.float32)
        moved = tfms.apply_coords(coords.copy())
        inside = (moved >= 0).all(1) & (moved < 32).all(1)
        assert inside.sum() > 10
        for (x, y), i, j in zip(moved[inside], ys[inside], xs[inside]):
            np.testing.assert_array_equal(out[int(y), int(x)], img[i, j])
        augment.reseed(crop_flip, (key,))  # legacy usage replays too
        newimg, params = crop_flip.augment_return_params(img)
        np.testing.assert_array_equal(newimg, out)
        np.testing.assert_allclose(crop_flip.augment_coords(coords.copy(), params), moved)
    # ImageNet random-area crop: x' = (x - x1) * 224 / ww, y' = (y - y1) * 224 / hh.
    aug = augment.RandomAreaCropResize(224)
    aug.rng = np.random.RandomState(1)
    big = _img((150, 200, 3))
    t = aug.get_transform(big)
    assert t.apply_image(big).shape == (224, 224, 3)  # lazy transforms need an image first
    c = t.tfms[0]
    pts = np.array([[c.x0, c.y0], [c.x0 + c.w, c.y0 + c.h], [100.0, 75.0]], np.float32)
    want = np.stack([(pts[:, 0] - c.x0) * 224 / c.w, (pts[:, 1] - c.y0) * 224 / c.h], 1)
    np.testing.assert_allclose(t.apply_coords(pts.copy()), want, rtol=1e-5)
    # ImageNet validation: scale by 256 / shortest edge, then shift by the centre crop.
    val = augment.augmentor_list("imagenet", False)
    big = _img((300, 400, 3))
    t = val.get_transform(big)
    assert t.apply_image(big).shape == (224, 224, 3)
    pts = np.array([[200.0, 150.0], [0.0, 0.0]], np.float32)
    s = 256 / 300
    want = np.stack([pts[:, 0] * 341 / 400 - (341 - 224) // 2, pts[:, 1] * s - (256 - 224) // 2], 1)
    np.testing.assert_allclose(t.apply_coords(pts.copy()), want, rtol=1e-5)


@needs_cifar
def test_svhn_center_paste_brightness_contrast_keep_floats_not_uint8():
    # tensorpack 0.2.0 pasted into np.zeros(...) (float64), so Brightness/Contrast clip to
    # [0, 255] but keep fractions; 0.11's uint8 paste would round every value down.
    # Real CIFAR-10 images stand in for SVHN (same 32x32x3 uint8 format).
    imgs = _cifar_subset_images(20)
    paste, bright, contrast = augment.augmentor_list("svhn", True).augmentors[:3]
    assert isinstance(paste, augment.CenterPasteFloat)
    fractional = 0
    for k, img in enumerate(imgs):
        canvas = paste.augment(img)
        assert canvas.dtype == np.float64 and canvas.shape == (40, 40, 3)
        np.testing.assert_array_equal(canvas[4:36, 4:36], img)
        assert (canvas[:4] == 0).all() and (canvas[:, 36:] == 0).all()
        bright.rng, ref = np.random.RandomState(k), np.random.RandomState(k)
        delta = ref.uniform(-10, 10)
        b = bright.augment(canvas)
        assert b.dtype == np.float64
        np.testing.assert_allclose(b, np.clip(canvas + delta, 0, 255), atol=1e-4)
        contrast.rng, ref = np.random.RandomState(100 + k), np.random.RandomState(100 + k)
        r = ref.uniform(0.8, 1.2)
        c = contrast.augment(b)
        m = b.mean(axis=(0, 1), keepdims=True)  # per channel, over the 40x40 canvas
        np.testing.assert_allclose(c, np.clip((b - m) * r + m, 0, 255), atol=1e-4)
        assert c.min() >= 0 and c.max() <= 255
        fractional += int((c != np.floor(c)).sum())
        # The old uint8 path truncates: it differs from the float result.
        old = imgaug.Contrast((0.8, 1.2))
        old.rng = np.random.RandomState(100 + k)
        b8 = imgaug.CenterPaste((40, 40)).augment(img)  # 0.11: uint8 canvas
        bright.rng = np.random.RandomState(k)
        u8 = old.augment(bright.augment(b8))
        assert u8.dtype == np.uint8 and not np.allclose(u8, c, atol=0.5)
    assert fractional > 0.5 * 20 * 40 * 40 * 3  # most values are not integers
    # The whole SVHN list hands floats on (GaussianDeform, crop), shaped 32x32x3.
    augs = augment.augmentor_list("svhn", True)
    augment.reseed(augs, (3,))
    out = augment.augment_image(augs, imgs[0])
    assert out.shape == (32, 32, 3) and out.dtype.kind == "f"
    assert (out != np.floor(out)).any()


def _authors_saturation(img, v, wrap):
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    ret = img * v + (grey * (1 - v))[:, :, None]
    if wrap:  # numpy's unchecked float -> uint8 cast on x86
        return (np.trunc(ret).astype(np.int64) % 256).astype(np.uint8)
    return np.clip(ret, 0, 255).astype(np.uint8)


def test_imagenet_jitter_runs_on_uint8_step_by_step():
    # 0.2.0: Brightness/Contrast/Lighting clip to [0, 255] and cast to uint8 (truncating)
    # after every step when the input is uint8, whatever clip= says.
    img = _img((16, 16, 3), seed=11)
    jitter = augment.augmentor_list("imagenet", True).augmentors[1]
    bright, contrast, sat, light = jitter.aug_lists
    bright.rng = np.random.RandomState(0)
    delta = np.random.RandomState(0).uniform(-30, 30)
    out = bright.augment(img)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(
        out, np.clip(img.astype(np.float32) + np.float32(delta), 0, 255).astype(np.uint8)
    )
    contrast.rng = np.random.RandomState(1)
    r = np.random.RandomState(1).uniform(0.8, 1.2)
    m = img.mean(axis=(0, 1), keepdims=True)
    want = np.clip(img * r + m * (1 - r), 0, 255).astype(np.uint8)
    got = contrast.augment(img)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1
    light.rng = np.random.RandomState(2)
    shift = ALEXNET_EIGVEC @ (np.random.RandomState(2).randn(3) * 0.1 * ALEXNET_EIGVAL)
    got = light.augment(img)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.clip(img + shift, 0, 255).astype(np.uint8))
    # The whole list: uint8 from the crop to the end.
    augs = augment.augmentor_list("imagenet", True)
    augment.reseed(augs, (4,))
    out = augment.augment_image(augs, _img((80, 100, 3)))
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)


def test_saturation_clips_by_default_and_wraps_as_the_authors_option():
    # Saturated colours with v > 1 overshoot [0, 255]: 0.2.0 wrapped them modulo 256.
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 250, 20, 5  # strong red
    img[:2, :, 0] = 0
    img[:2, :, 1:] = 240  # strong cyan
    plain = augment.augmentor_list("imagenet", True).augmentors[1].aug_lists[2]
    wrap = (
        augment.augmentor_list("imagenet", True, imagenet_saturation="authors-wrap")
        .augmentors[1]
        .aug_lists[2]
    )
    assert isinstance(wrap, augment.SaturationWrap)
    v = 1.35  # a strong boost (max 1.4)
    a = plain._augment(img, v)
    b = wrap._augment(img, v)
    np.testing.assert_array_equal(a, _authors_saturation(img, v, wrap=False))
    np.testing.assert_array_equal(b, _authors_saturation(img, v, wrap=True))
    raw = img * v + (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) * (1 - v))[:, :, None]
    over, under = raw > 255, raw < 0
    assert over.any() and under.any()
    assert (a[over] == 255).all() and (a[under] == 0).all()
    assert (b[over] < 255).all() and (b[under] > 0).all()  # wrapped, not saturated
    np.testing.assert_array_equal(a[~over & ~under], b[~over & ~under])
    with pytest.raises(ValueError):
        augment.augmentor_list("imagenet", True, imagenet_saturation="bgr")
