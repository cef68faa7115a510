"""Augmentation lists of SPEC §10, incl. tensorpack's imgaug_test.py behaviour on our lists."""
import cv2
import numpy as np
import pytest
from tensorpack.dataflow import imgaug

from epsresnet_tf.data import augment


def _img(shape=(32, 32, 3), seed=0, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


LISTS = [("cifar10", True, (32, 32, 3), (32, 32, 3)),
         ("svhn", True, (32, 32, 3), (32, 32, 3)),
         ("imagenet", True, (90, 120, 3), (224, 224, 3)),
         ("imagenet", False, (300, 260, 3), (224, 224, 3))]


@pytest.mark.parametrize("name,train,in_shape,out_shape", LISTS)
def test_ported_imgaug_transform_replays_and_keeps_input(name, train, in_shape, out_shape):
    # Port of tensorpack imgaug_test.ImgAugTest.test_augmentors / test_legacy_usage.
    augs = augment.augmentor_list(name, train)
    augment.reseed(augs, (7,))
    img = _img(in_shape)
    orig = img.copy()
    tfms = augs.get_transform(img)
    new1 = tfms.apply_image(img)
    np.testing.assert_array_equal(img, orig)          # the input is not modified in place
    new2 = tfms.apply_image(orig)
    assert np.allclose(new1, new2) and new1.shape == out_shape
    assert str(augs) and str(tfms)                   # printing works
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
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                if np.array_equal(out, (padded[dy:dy + 32, dx:dx + 32][:, ::-1] if f
                                        else padded[dy:dy + 32, dx:dx + 32]))]
        assert hits, "augmented image is not a (flipped) window of the padded original"
        offsets.add(hits[0][:2])
        flips += hits[0][2]
    assert 100 < flips < 200            # Flip(horiz) with p = 0.5
    assert len(offsets) > 40            # RandomCrop reaches most of the 81 offsets
    dys, dxs = {o[0] for o in offsets}, {o[1] for o in offsets}
    assert min(dys) == min(dxs) == 0 and max(dys) == max(dxs) == 8   # pad 4 each side


def test_svhn_list_is_spec():
    augs = augment.augmentor_list("svhn", True).augmentors
    kinds = [type(a).__name__ for a in augs]
    assert kinds == ["CenterPaste", "Brightness", "Contrast", "GaussianDeform", "RandomCrop"]
    assert augs[0].background_shape == (40, 40) and augs[1].delta == 10
    assert augs[2].factor_range == (0.8, 1.2) and augs[4].crop_shape == (32, 32)
    assert augs[3].anchors == [(0.2, 0.2), (0.2, 0.8), (0.8, 0.8), (0.8, 0.2)]
    assert augs[3].shape == (40, 40) and augs[3].sigma == 0.2 and augs[3].randrange == 3
    assert augment.augmentor_list("svhn", False) is None
    assert augment.augmentor_list("cifar100", False) is None
    assert augment.augmentor_list("mnist", True) is None


def test_imagenet_train_list_and_random_order():
    augs = augment.augmentor_list("imagenet", True).augmentors
    assert [type(a).__name__ for a in augs] == ["RandomAreaCropResize", "RandomOrderAug",
                                                "Clip", "Flip", "ToUint8"]
    inner = [type(a).__name__ for a in augs[1].aug_lists]
    assert inner == ["Brightness", "Contrast", "Saturation", "Lighting"]
    assert augs[1].aug_lists[0].delta == 30 and augs[1].aug_lists[2].alpha == 0.4
    assert augs[1].aug_lists[3].std == 0.1
    # The AlexNet PCA basis is orthonormal.
    v = augment.IMAGENET_EIGVEC
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=2e-3)
    out = augment.augment_image(augment.augmentor_list("imagenet", True), _img((80, 100, 3)))
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)


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
        expect = cv2.resize(img[crop.y0:crop.y0 + crop.h, crop.x0:crop.x0 + crop.w], (224, 224),
                            interpolation=cv2.INTER_CUBIC)
        np.testing.assert_array_equal(t.apply_image(img), expect)
    # A 1x60 strip admits no crop of aspect 3/4..4/3 with area >= 8 %: whole-image resize.
    strip = _img((1, 60, 3), seed=4)
    out = aug.get_transform(strip).apply_image(strip)
    np.testing.assert_array_equal(out, cv2.resize(strip, (224, 224), interpolation=cv2.INTER_CUBIC))


def test_imagenet_val_shortest_edge_256_centre_crop_224():
    augs = augment.augmentor_list("imagenet", False)
    img = _img((300, 400, 3), seed=5)
    out = augment.augment_image(augs, img)
    big = cv2.resize(img, (341, 256), interpolation=cv2.INTER_LINEAR)   # 400 * 256 / 300
    y0, x0 = (256 - 224) // 2, (341 - 224) // 2
    np.testing.assert_array_equal(out, big[y0:y0 + 224, x0:x0 + 224])


def test_photometric_augmentors_match_numpy():
    # The tensorpack augmentors we rely on do what SPEC §10 names, per independent numpy.
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
