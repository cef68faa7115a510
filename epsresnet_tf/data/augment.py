"""The augmentation lists (docs/semantics.md), built from tensorpack imgaug, and their reseeding.

``augmentor_list(name, train)`` returns a tensorpack ``AugmentorList`` built by the list
builder the dataset's description names (or ``None`` where the split has no augmentation:
CIFAR/SVHN test, MNIST). The input normalisation
(mean image subtraction and /128; ImageNet /255, mean, std) is *not* in these lists: it is
one vectorised step per batch in the pipeline, which gives the same numbers as the authors'
per-image ``MapImage(lambda x: x - pp_mean)`` applied after the crop (the zero padding of
CenterPaste therefore becomes ``-mean`` exactly as in their code).

The authors ran tensorpack 0.2.0; we run 0.11, and three of its augmentors behave
differently. Where they do, the lists reproduce 0.2.0 (see docs/semantics.md):

* ``RandomCrop``: 0.2.0 drew the corner with ``rng.randint(diff)`` (numpy's exclusive
  high: offsets ``0 .. diff - 1``, i.e. 0..7 for 40 -> 32, never the last one); 0.11 draws
  ``rng.randint(diff + 1)`` (0..8). :class:`RandomCrop020` keeps 0.2.0's formula.
* ``CenterPaste``: 0.2.0's background is ``np.zeros(shape) + 0`` — float64 — so every later
  augmentor sees floats; 0.11 pastes into an array of the input's dtype (uint8).
  :class:`CenterPasteFloat` pastes into float64. On SVHN this matters: 0.2.0's
  ``Brightness(10)`` / ``Contrast((0.8, 1.2))`` (default ``clip=True``) clip the float image
  to [0, 255] but keep the fractions, whereas on uint8 they would also truncate to integers.
  (On CIFAR nothing photometric follows, so the uint8 paste gives the same numbers.)
* ImageNet colour jitter: 0.2.0's ``Brightness``/``Contrast``/``Lighting`` clip to
  [0, 255] and cast back to the input dtype *whenever the input is uint8*, whatever
  ``clip=`` says; the authors' images are uint8 there (their crop-resize returns
  ``cv2.resize`` of the decoded uint8 image), so each step rounds down and clips, and the
  final ``Clip()`` is a no-op. 0.2.0's ``Saturation`` casts ``img * v + grey * (1 - v)``
  back to uint8 *without* clipping: values above 255 or below 0 wrap modulo 256 (a bug).
  We apply the four steps to uint8 as 0.2.0 did; Saturation clips by default (tensorpack
  0.11's behaviour) and :class:`SaturationWrap` (``imagenet_saturation="authors-wrap"``)
  reproduces the wrap-around.

ImageNet images are handled in RGB (decoded with OpenCV, then converted), so the AlexNet PCA
constants and ``Saturation(rgb=True)`` take their published RGB order; the authors keep BGR
and reverse the constants, which is the same transformation up to a channel permutation.
One deliberate difference: the authors' script (tensorpack's 2017 ImageNet example) passes
the AlexNet eigenvalues unscaled to pixels in [0, 255], which makes the lighting noise ~255×
weaker than AlexNet's (a fraction of a grey level, which the uint8 cast then truncates); we
scale them by 255 as fb.resnet.torch intends and as tensorpack's later examples do.
Validation resize is bilinear, as their ``ResizeShortestEdge(256)``.

``reseed(aug, key)`` gives every augmentor in the tree its own ``RandomState`` derived from
`key` (e.g. (seed, epoch, batch)), which is what makes the pipeline deterministic.
"""

import cv2
import numpy as np
from tensorpack.dataflow import imgaug

# GaussianDeform is deprecated in tensorpack 0.11 and not exported from imgaug (docs/semantics.md).
from tensorpack.dataflow.imgaug.deform import GaussianDeform
from tensorpack.dataflow.imgaug.transform import CropTransform, ResizeTransform, TransformFactory

from epsresnet_tf.data import datasets

# AlexNet's PCA lighting noise (fb.resnet.torch), RGB order, for pixels in [0, 255].
IMAGENET_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045], dtype=np.float32) * 255.0
IMAGENET_EIGVEC = np.asarray(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    dtype=np.float32,
)

SVHN_DEFORM_ANCHORS = [(0.2, 0.2), (0.2, 0.8), (0.8, 0.8), (0.8, 0.2)]

#: Values of ``imagenet_saturation``: 0.11's clipping, or 0.2.0's uint8 wrap-around.
SATURATION_MODES = ("clip", "authors-wrap")


class RandomCrop020(imgaug.RandomCrop):
    """``RandomCrop`` with tensorpack 0.2.0's corner: ``0 if diff == 0 else rng.randint(diff)``.

    numpy's ``randint(high)`` excludes `high`, so a 40 -> 32 crop starts at 0..7 (0.2.0,
    which the authors ran) rather than 0..8 (0.11 draws ``randint(diff + 1)``): the window
    flush with the bottom/right edge of the padded image is never drawn. Same draw order
    (row, then column) and the same ``CropTransform``, so coordinates still replay.
    See docs/semantics.md.
    """

    def get_transform(self, img):
        h, w = img.shape[:2]
        assert h >= self.crop_shape[0] and w >= self.crop_shape[1], img.shape
        diffh, diffw = h - self.crop_shape[0], w - self.crop_shape[1]
        h0 = 0 if diffh == 0 else self.rng.randint(diffh)
        w0 = 0 if diffw == 0 else self.rng.randint(diffw)
        return CropTransform(h0, w0, self.crop_shape[0], self.crop_shape[1])


class CenterPasteFloat(imgaug.CenterPaste):
    """``CenterPaste`` onto a float64 zero canvas, as tensorpack 0.2.0 (``np.zeros(shape) +
    value``); 0.11 keeps the input dtype, so later photometric augmentors would round and
    clip uint8. See docs/semantics.md."""

    def get_transform(self, _):
        return TransformFactory(name=str(self), apply_image=self._impl_float)

    def _impl_float(self, img):
        h, w = img.shape[:2]
        bh, bw = self.background_shape
        assert bh >= h and bw >= w, (img.shape, self.background_shape)
        value = getattr(self.background_filler, "value", 0)
        background = np.zeros((bh, bw) + img.shape[2:], np.float64) + value
        y0, x0 = int((bh - h) * 0.5), int((bw - w) * 0.5)
        background[y0 : y0 + h, x0 : x0 + w] = img
        return background


class SaturationWrap(imgaug.Saturation):
    """tensorpack 0.2.0's ``Saturation`` on uint8: ``img * v + grey * (1 - v)`` cast back to
    uint8 without clipping, so out-of-range values wrap modulo 256 (what numpy's C cast did
    on the authors' x86 machines: truncate toward zero, keep the low byte). Written out
    explicitly because that cast is undefined behaviour in C. Only with
    ``imagenet_saturation="authors-wrap"``; see docs/semantics.md."""

    def _augment(self, img, v):
        if img.dtype != np.uint8:
            return super()._augment(img, v)
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if self.rgb else cv2.COLOR_BGR2GRAY)
        ret = img * v + (grey * (1 - v))[:, :, np.newaxis]
        return (np.trunc(ret).astype(np.int64) & 0xFF).astype(np.uint8)


class RandomAreaCropResize(imgaug.GoogleNetRandomCropAndResize):
    """Random area 8–100 %, aspect 3/4–4/3, 10 tries, bicubic resize to 224 (docs/semantics.md).

    ``get_transform`` is written out because tensorpack's ``GoogleNetRandomCropAndResize``
    rounds the window and, after 10 failed tries, falls back to ResizeShortestEdge +
    CenterCrop; the authors' ImageNet script truncates the window size, draws the corner
    with ``randint(0, w - ww)`` and resizes the whole image on failure. Their arithmetic is
    kept; the result is a tensorpack ``TransformList`` so that images and coordinates replay.
    """

    def __init__(self, target_shape=224):
        super().__init__(
            crop_area_fraction=(0.08, 1.0),
            aspect_ratio_range=(0.75, 1.333),
            target_shape=target_shape,
            interp=cv2.INTER_CUBIC,
        )

    def get_transform(self, img):
        h, w = img.shape[:2]
        area = h * w
        for _ in range(10):
            target_area = self.rng.uniform(*self.crop_area_fraction) * area
            aspect = self.rng.uniform(*self.aspect_ratio_range)
            ww = int(np.sqrt(target_area * aspect))
            hh = int(np.sqrt(target_area / aspect))
            if self.rng.uniform() < 0.5:
                ww, hh = hh, ww
            if 0 < hh <= h and 0 < ww <= w:
                x1 = 0 if w == ww else self.rng.randint(0, w - ww)
                y1 = 0 if h == hh else self.rng.randint(0, h - hh)
                return imgaug.TransformList(
                    [
                        CropTransform(y1, x1, hh, ww),
                        ResizeTransform(hh, ww, self.target_shape, self.target_shape, self.interp),
                    ]
                )
        return ResizeTransform(h, w, self.target_shape, self.target_shape, self.interp)


def cifar_train():
    # uint8 paste: with nothing photometric after it, 0.2.0's float64 canvas gives the same
    # pixel values (and the uint8 batches are 8x cheaper to hand to TF).
    return [imgaug.CenterPaste((40, 40)), RandomCrop020((32, 32)), imgaug.Flip(horiz=True)]


def svhn_train():
    # Float canvas as 0.2.0: Brightness/Contrast (clip=True, their default in 0.2.0 too)
    # clip to [0, 255] but keep fractional values; nothing is truncated to uint8.
    return [
        CenterPasteFloat((40, 40)),
        imgaug.Brightness(10),
        imgaug.Contrast((0.8, 1.2)),
        GaussianDeform(SVHN_DEFORM_ANCHORS, (40, 40), 0.2, 3),
        RandomCrop020((32, 32)),
    ]


def imagenet_train(saturation="clip"):
    # As 0.2.0 ran the authors' list: every colour step works on the uint8 image and casts
    # back to uint8 (clip to [0, 255], then truncate), whatever clip= says; Clip() and
    # ToUint8() are then no-ops, kept because they are in the authors' list.
    if saturation not in SATURATION_MODES:
        raise ValueError(
            f"imagenet_saturation must be one of {SATURATION_MODES}, not {saturation!r}"
        )
    # clip=False as in 0.2.0 (no clip argument there; only uint8 input was clipped). On our
    # uint8 images 0.11's Saturation still clips; SaturationWrap wraps as 0.2.0 did.
    sat = (
        SaturationWrap(0.4, rgb=True, clip=False)
        if saturation == "authors-wrap"
        else imgaug.Saturation(0.4, rgb=True, clip=False)
    )
    return [
        RandomAreaCropResize(224),
        imgaug.RandomOrderAug(
            [
                imgaug.Brightness(30, clip=False),
                imgaug.Contrast((0.8, 1.2), clip=False),
                sat,
                imgaug.Lighting(0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC, clip=False),
            ]
        ),
        imgaug.Clip(),
        imgaug.Flip(horiz=True),
        imgaug.ToUint8(),
    ]


def imagenet_val():
    return [imgaug.ResizeShortestEdge(256), imgaug.CenterCrop((224, 224))]


def augmentor_list(name: str, train: bool, imagenet_saturation: str = "clip"):
    """The augmentation list of dataset `name` (the builder its description names), as an
    ``AugmentorList``, or None for identity. `imagenet_saturation`: "clip" (default) or
    "authors-wrap" (0.2.0's uint8 overflow), for datasets with that quirk."""
    try:
        ds = datasets.get(name)
    except Exception:
        raise ValueError(name) from None
    builder = ds.train_augmentors if train else ds.eval_augmentors
    if builder is None:
        return None  # e.g. CIFAR/SVHN evaluation, MNIST and digits (raw pixels)
    # the saturation quirk is a training augmentor's (ImageNet's colour jitter)
    kwargs = {"saturation": imagenet_saturation} if train and "saturation" in ds.quirks else {}
    augs = BUILDERS[builder](**kwargs)
    return imgaug.AugmentorList(augs) if augs else None


#: The list builders a dataset description may name.
BUILDERS = {
    "cifar_train": cifar_train,
    "svhn_train": svhn_train,
    "imagenet_train": imagenet_train,
    "imagenet_val": imagenet_val,
}


def _walk(aug):
    yield aug
    for attr in ("augmentors", "aug_lists"):  # AugmentorList, RandomOrderAug/ChooseAug
        for child in getattr(aug, attr, None) or ():
            if isinstance(child, (list, tuple)):  # RandomChooseAug may hold (aug, prob)
                child = child[0]
            yield from _walk(child)
    if isinstance(getattr(aug, "aug", None), imgaug.ImageAugmentor):  # RandomApplyAug
        yield from _walk(aug.aug)


def reseed(aug, key):
    """Give each augmentor under `aug` a RandomState derived from the int tuple `key`."""
    nodes = list(_walk(aug))
    states = np.random.SeedSequence([int(k) for k in key]).generate_state(len(nodes))
    for node, s in zip(nodes, states):
        node.rng = np.random.RandomState(int(s))


def augment_image(aug, img):
    """Apply `aug` (an AugmentorList or None) to one image; keeps a trailing channel axis."""
    if aug is None:
        return img
    out = aug.augment(img)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


__all__ = [
    "augmentor_list",
    "BUILDERS",
    "reseed",
    "augment_image",
    "RandomAreaCropResize",
    "RandomCrop020",
    "CenterPasteFloat",
    "SaturationWrap",
    "SATURATION_MODES",
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
]
