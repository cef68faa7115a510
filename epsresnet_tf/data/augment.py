"""The augmentation lists of SPEC §10, built from tensorpack imgaug, and their reseeding.

``augmentors(name, train)`` returns a tensorpack ``AugmentorList`` (or ``None`` where the
split has no augmentation: CIFAR/SVHN test, MNIST). The input normalisation of SPEC §6
(mean image subtraction and /128; ImageNet /255, mean, std) is *not* in these lists: it is
one vectorised step per batch in the pipeline, which gives the same numbers as the authors'
per-image ``MapImage(lambda x: x - pp_mean)`` applied after the crop (the zero padding of
CenterPaste therefore becomes ``-mean`` exactly as in their code).

ImageNet images are handled in RGB (decoded with OpenCV, then converted), so the AlexNet PCA
constants and ``Saturation(rgb=True)`` take their published RGB order; the authors keep BGR
and reverse the constants, which is the same transformation up to a channel permutation.
One deliberate difference: the authors' script (tensorpack's 2017 ImageNet example) passes
the AlexNet eigenvalues unscaled to pixels in [0, 255], which makes the lighting noise ~255×
weaker than AlexNet's (a fraction of a grey level); we scale them by 255 as fb.resnet.torch
intends and as tensorpack's later examples do. Everything else follows the authors' lists
(the four colour augmentors unclipped in float before ``Clip``, as in the tensorpack they
used; validation resize bilinear, as their ``ResizeShortestEdge(256)``).

``reseed(aug, key)`` gives every augmentor in the tree its own ``RandomState`` derived from
`key` (e.g. (seed, epoch, batch)), which is what makes the pipeline deterministic.
"""
import cv2
import numpy as np
from tensorpack.dataflow import imgaug
# GaussianDeform is deprecated in tensorpack 0.11 and not exported from imgaug (SPEC §13).
from tensorpack.dataflow.imgaug.deform import GaussianDeform
from tensorpack.dataflow.imgaug.transform import CropTransform, ResizeTransform

# AlexNet's PCA lighting noise (fb.resnet.torch), RGB order, for pixels in [0, 255].
IMAGENET_EIGVAL = np.asarray([0.2175, 0.0188, 0.0045], dtype=np.float32) * 255.0
IMAGENET_EIGVEC = np.asarray([[-0.5675, 0.7192, 0.4009],
                              [-0.5808, -0.0045, -0.8140],
                              [-0.5836, -0.6948, 0.4203]], dtype=np.float32)

SVHN_DEFORM_ANCHORS = [(0.2, 0.2), (0.2, 0.8), (0.8, 0.8), (0.8, 0.2)]


class RandomAreaCropResize(imgaug.GoogleNetRandomCropAndResize):
    """Random area 8–100 %, aspect 3/4–4/3, 10 tries, bicubic resize to 224 (SPEC §10).

    ``get_transform`` is written out because tensorpack's ``GoogleNetRandomCropAndResize``
    rounds the window and, after 10 failed tries, falls back to ResizeShortestEdge +
    CenterCrop; the authors' ImageNet script truncates the window size, draws the corner
    with ``randint(0, w - ww)`` and resizes the whole image on failure. Their arithmetic is
    kept; the result is a tensorpack ``TransformList`` so that images and coordinates replay.
    """

    def __init__(self, target_shape=224):
        super().__init__(crop_area_fraction=(0.08, 1.0), aspect_ratio_range=(0.75, 1.333),
                         target_shape=target_shape, interp=cv2.INTER_CUBIC)

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
                return imgaug.TransformList([
                    CropTransform(y1, x1, hh, ww),
                    ResizeTransform(hh, ww, self.target_shape, self.target_shape, self.interp)])
        return ResizeTransform(h, w, self.target_shape, self.target_shape, self.interp)


def cifar_train():
    return [imgaug.CenterPaste((40, 40)),
            imgaug.RandomCrop((32, 32)),
            imgaug.Flip(horiz=True)]


def svhn_train():
    return [imgaug.CenterPaste((40, 40)),
            imgaug.Brightness(10),
            imgaug.Contrast((0.8, 1.2)),
            GaussianDeform(SVHN_DEFORM_ANCHORS, (40, 40), 0.2, 3),
            imgaug.RandomCrop((32, 32))]


def imagenet_train():
    # The colour jitter works in float32 and unclipped, as the authors' clip=False + Clip()
    # intend (tensorpack 0.11's augmentors round and clip every step on uint8 input).
    return [RandomAreaCropResize(224),
            imgaug.ToFloat32(),
            imgaug.RandomOrderAug([
                imgaug.Brightness(30, clip=False),
                imgaug.Contrast((0.8, 1.2), clip=False),
                imgaug.Saturation(0.4, rgb=True, clip=False),
                imgaug.Lighting(0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC,
                                clip=False)]),
            imgaug.Clip(),
            imgaug.Flip(horiz=True),
            imgaug.ToUint8()]


def imagenet_val():
    return [imgaug.ResizeShortestEdge(256),
            imgaug.CenterCrop((224, 224))]


def augmentor_list(name, train):
    """The SPEC §10 list for dataset `name`, as an ``AugmentorList``, or None for identity."""
    if name in ("cifar10", "cifar100"):
        augs = cifar_train() if train else None
    elif name == "svhn":
        augs = svhn_train() if train else None
    elif name == "imagenet":
        augs = imagenet_train() if train else imagenet_val()
    elif name in ("mnist", "digits"):
        augs = None  # the gates paper trains its MNIST nets on raw pixels; digits likewise
    else:
        raise ValueError(name)
    return imgaug.AugmentorList(augs) if augs else None


def _walk(aug):
    yield aug
    for attr in ("augmentors", "aug_lists"):       # AugmentorList, RandomOrderAug/ChooseAug
        for child in getattr(aug, attr, None) or ():
            if isinstance(child, (list, tuple)):   # RandomChooseAug may hold (aug, prob)
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


__all__ = ["augmentor_list", "reseed", "augment_image", "RandomAreaCropResize",
           "IMAGENET_EIGVAL", "IMAGENET_EIGVEC"]
