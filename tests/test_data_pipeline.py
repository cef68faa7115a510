"""Pipelines: determinism from (seed, epoch), sharding, normalisation, mean image, bad JPEGs."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from epsresnet_tf.data import datasets, pipeline
from epsresnet_tf.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED / "cifar10-subset"
MNIST = SHARED / "mnist-subset"
needs_shared = pytest.mark.skipif(
    not (CIFAR.is_dir() and MNIST.is_dir()),
    reason=f"the real CIFAR-10/MNIST subsets are not at {SHARED} on this machine",
)


def _numpy_cifar_train():
    xs = []
    for i in range(1, 6):
        with open(CIFAR / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(xs)


def _numpy_cifar_test():
    with open(CIFAR / "cifar-10-batches-py" / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return np.asarray(d["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _take(pipe, epoch, n=None, start=0):
    out = []
    for k, b in enumerate(pipe.batches(epoch, start)):
        out.append(b)
        if n is not None and k + 1 == n:
            break
    return out


@needs_shared
def test_mean_image_matches_numpy_train_and_train_plus_test():
    x = _numpy_cifar_train().astype(np.float64)
    t = _numpy_cifar_test().astype(np.float64)
    m = pipeline.mean_image("cifar10", CIFAR, "train")
    assert m.shape == (32, 32, 3) and m.dtype == np.float32
    np.testing.assert_allclose(m, x.mean(axis=0), rtol=1e-6)
    m2 = pipeline.mean_image("cifar10", CIFAR, "train+test")
    np.testing.assert_allclose(m2, np.concatenate([x, t]).mean(axis=0), rtol=1e-6)
    assert not np.allclose(m, m2)


@needs_shared
def test_default_mean_is_train_plus_test_from_the_readers_arrays():
    # tensorpack's get_per_pixel_mean (the authors' scripts) averages train and test; that
    # is the default. Computed here from the reader's own arrays, in float64.
    pipeline._MEAN_CACHE.clear()
    tr = datasets.read_split("cifar10", "train", CIFAR).images.astype(np.float64)
    te = datasets.read_split("cifar10", "test", CIFAR).images.astype(np.float64)
    assert len(tr) == 5085 and len(te) == 1017
    want = np.concatenate([tr, te]).mean(axis=0)
    pipe = pipeline.make_pipeline("cifar10", "test", CIFAR, 100, train=False)
    np.testing.assert_allclose(pipe.mean, want, rtol=1e-6)
    np.testing.assert_allclose(pipeline.mean_image("cifar10", CIFAR), want, rtol=1e-6)
    only = pipeline.make_pipeline("cifar10", "test", CIFAR, 100, train=False, mean="train")
    np.testing.assert_allclose(only.mean, tr.mean(axis=0), rtol=1e-6)
    assert np.abs(pipe.mean - only.mean).max() > 0.1  # the option really differs
    x, _ = next(iter(pipe.dataset(0)))
    np.testing.assert_allclose(x.numpy(), (te[:100] - want) / 128.0, atol=1e-5)


@needs_shared
def test_same_seed_epoch_identical_other_epoch_or_seed_differs():
    a = pipeline.make_pipeline("cifar10", "train", CIFAR, 64, train=True, seed=11)
    b = pipeline.make_pipeline("cifar10", "train", CIFAR, 64, train=True, seed=11)
    e3a, e3b = _take(a, 3, 4), _take(b, 3, 4)
    for (xa, ya), (xb, yb) in zip(e3a, e3b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    e4 = _take(a, 4, 4)
    assert not np.array_equal(e3a[0][1], e4[0][1])  # different order
    other = pipeline.make_pipeline("cifar10", "train", CIFAR, 64, train=True, seed=12)
    assert not np.array_equal(e3a[0][0], _take(other, 3, 1)[0][0])
    assert len(a) == 5085 // 64


@needs_shared
def test_resume_mid_epoch_sees_the_uninterrupted_batches():
    pipe = pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=5)
    full = _take(pipe, 2)
    resumed = _take(pipe, 2, start=30)
    assert len(full) == 5085 // 128 and len(resumed) == len(full) - 30
    for (xa, ya), (xb, yb) in zip(full[30:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@needs_shared
def test_training_batches_are_augmented_windows_of_the_served_images():
    pipe = pipeline.make_pipeline("cifar10", "train", CIFAR, 100, train=True, seed=1)
    x = _numpy_cifar_train()
    order = pipe.order(0)
    assert sorted(order.tolist()) == list(range(5085))  # a permutation
    images, labels = next(pipe.batches(0))
    np.testing.assert_array_equal(labels, pipe.source.labels[order[:100]])
    for k in range(0, 100, 9):
        padded = np.zeros((40, 40, 3), np.uint8)
        padded[4:36, 4:36] = x[order[k]]
        # Offsets 0..7 (tensorpack 0.2.0's RandomCrop), not 0..8.
        ok = any(
            np.array_equal(images[k], w) or np.array_equal(images[k], w[:, ::-1])
            for w in (padded[dy : dy + 32, dx : dx + 32] for dy in range(8) for dx in range(8))
        )
        assert ok


@needs_shared
def test_eval_covers_whole_split_once_across_shards_without_dropping():
    t = _numpy_cifar_test()
    seen = []
    for shard in range(3):
        pipe = pipeline.make_pipeline(
            "cifar10", "test", CIFAR, 100, train=False, num_shards=3, shard_index=shard
        )
        batches = _take(pipe, 0)
        assert len(batches) == pipe.num_batches == -(-len(range(shard, 1017, 3)) // 100)
        assert len(batches[-1][1]) < 100  # remainder kept
        for xb, _ in batches:
            seen.append(xb)
    seen = np.concatenate(seen)
    assert len(seen) == 1017
    assert sorted(bytes(r) for r in seen.reshape(1017, -1)) == sorted(
        bytes(r) for r in t.reshape(1017, -1)
    )


@needs_shared
def test_training_shards_are_disjoint_and_equal_length():
    pipes = [
        pipeline.make_pipeline(
            "cifar10", "train", CIFAR, 64, train=True, seed=2, num_shards=2, shard_index=i
        )
        for i in range(2)
    ]
    o0, o1 = pipes[0].order(7), pipes[1].order(7)
    assert len(o0) == len(o1) == 5085 // 2 and not set(o0) & set(o1)
    assert pipes[0].num_batches == pipes[1].num_batches


@needs_shared
def test_tf_dataset_normalisation_matches_numpy_and_is_deterministic():
    import tensorflow as tf

    ds = pipeline.make_pipeline("cifar10", "test", CIFAR, 256, train=False, seed=0).dataset(0)
    batches = list(ds)
    assert [int(b[1].shape[0]) for b in batches] == [256, 256, 256, 249]
    x0, y0 = batches[0]
    assert x0.dtype == tf.float32 and y0.dtype == tf.int32 and tuple(x0.shape) == (256, 32, 32, 3)
    t = _numpy_cifar_test().astype(np.float64)
    # The default mean is now train+test (tensorpack's get_per_pixel_mean), was train.
    mean = np.concatenate([_numpy_cifar_train().astype(np.float64), t]).mean(axis=0)
    np.testing.assert_allclose(x0.numpy(), (t[:256] - mean) / 128.0, atol=1e-5)
    tr1 = next(
        iter(pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=4).dataset(2))
    )
    tr2 = next(
        iter(pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=4).dataset(2))
    )
    np.testing.assert_array_equal(tr1[0].numpy(), tr2[0].numpy())
    assert tr1[0].shape[0] == 128
    # Padding becomes -mean/128, as the authors' MapImage after the crop gives.
    raw, _ = next(
        pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=4).batches(2)
    )
    m = pipeline.mean_image("cifar10", CIFAR)
    np.testing.assert_allclose(tr1[0].numpy(), (raw.astype(np.float32) - m) / 128.0, atol=1e-6)


@needs_shared
def test_mnist_pixels_over_255_no_augmentation():
    pipe = pipeline.make_pipeline("mnist", "train", MNIST, 500, train=True, seed=0)
    x, y = next(iter(pipe.dataset(0)))
    src = datasets.read_split("mnist", "train", MNIST)
    idx = pipe.order(0)[:500]
    np.testing.assert_allclose(x.numpy(), src.images[idx] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), src.labels[idx])
    assert tuple(x.shape[1:]) == (28, 28, 1)


@needs_shared
def test_worker_processes_give_the_same_batches():
    serial = pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=9)
    par = pipeline.make_pipeline("cifar10", "train", CIFAR, 128, train=True, seed=9, workers=2)
    a, b = _take(serial, 1, 8), _take(par, 1, 8)
    assert len(a) == len(b) == 8
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_bad_arguments():
    with pytest.raises(UserError):
        pipeline.make_pipeline("cifar1000", "test", CIFAR, 10, train=False)
    with pytest.raises(UserError, match="mean"):
        pipeline.mean_image("cifar10", CIFAR, "test")


def _imagenet(tmp_path):
    from test_data_readers import write_imagenet_tree

    return write_imagenet_tree(tmp_path / "imagenet", np.random.default_rng(8))


def test_imagenet_corrupt_jpeg_skipped_counted_reported(tmp_path, monkeypatch, caplog):
    wnids, truth, bad = _imagenet(tmp_path)
    monkeypatch.setattr(pipeline, "MAX_BAD_FRACTION", 0.5)
    pipe = pipeline.make_pipeline(
        "imagenet", "train", tmp_path, 3, train=True, seed=0, drop_remainder=False
    )
    with caplog.at_level("WARNING"):
        batches = _take(pipe, 0)
    n = sum(len(y) for _, y in batches)
    assert n == len(truth) - 1  # everything but the corrupt file
    assert all(x.shape[1:] == (224, 224, 3) and x.dtype == np.uint8 for x, _ in batches)
    assert [len(y) for _, y in batches[:-1]] == [3] * (len(batches) - 1)  # re-batched
    rep = pipe.reports[-1]
    assert rep.skipped == 1 and rep.skipped_paths == [str(bad)] and rep.seen == len(truth)
    assert "undecodable" in caplog.text and str(bad) in caplog.text
    val = pipeline.make_pipeline("imagenet", "val", tmp_path, 3, train=False)
    vb = _take(val, 0)
    assert [len(y) for _, y in vb] == [3, 1] and vb[0][0].shape[1:] == (224, 224, 3)


def test_imagenet_too_many_undecodable_stops(tmp_path):
    _imagenet(tmp_path)  # 1 of 8 files corrupt: far above 0.1 %
    pipe = pipeline.make_pipeline("imagenet", "train", tmp_path, 2, train=True, seed=0)
    with pytest.raises(UserError, match="undecodable") as err:
        _take(pipe, 0)
    assert isinstance(err.value, pipeline.TooManyBadImages)


def test_svhn_pipeline_on_written_mat(tmp_path):
    from test_data_readers import _write_svhn

    rng = np.random.default_rng(9)
    (tmp_path / "svhn").mkdir()
    xt, _ = _write_svhn(tmp_path / "svhn" / "train_32x32.mat", 20, rng)
    xe, _ = _write_svhn(tmp_path / "svhn" / "extra_32x32.mat", 12, rng)
    xs, _ = _write_svhn(tmp_path / "svhn" / "test_32x32.mat", 5, rng)
    pipe = pipeline.make_pipeline("svhn", "train", tmp_path, 8, train=True, seed=1)
    assert pipe.num_batches == 4  # train + extra mixed
    # Default mean as tensorpack's SVHNDigit.get_per_pixel_mean: train, test and extra.
    allx = np.concatenate([np.transpose(v, (3, 0, 1, 2)) for v in (xt, xe, xs)])
    np.testing.assert_allclose(pipe.mean, allx.astype(np.float64).mean(axis=0), rtol=1e-6)
    only = pipeline.make_pipeline("svhn", "train", tmp_path, 8, train=True, seed=1, mean="train")
    np.testing.assert_allclose(only.mean, allx[:32].astype(np.float64).mean(axis=0), rtol=1e-6)
    assert (pipe.order(0) >= 20).any() and (pipe.order(0) < 20).any()
    x, y = next(pipe.batches(0))
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and (y < 10).all()
    assert (x != np.round(x)).any()  # float canvas: not truncated to uint8 (0.2.0)
    x2, _ = next(pipe.batches(0))
    np.testing.assert_array_equal(x, x2)


@needs_shared
def test_pipeline_dataset_is_the_stream_the_training_loop_feeds():
    # One data -> tf.data path: Pipeline.dataset, the loop's epochs_dataset and the
    # evaluation batches are the same normalised batches of the same stream.
    import tensorflow as tf

    pipe = pipeline.make_pipeline("cifar10", "train", CIFAR, 200, train=True, seed=6)
    n = pipe.num_batches  # 25
    direct = [b for _, b in zip(range(3), pipe.dataset(1, epochs=2, start_batch=n - 2))]
    cut = list(pipeline.epochs_dataset(pipe, 0, 1, n + 1, 200))  # epoch 0 of n + 1 steps
    assert [int(b[1].shape[0]) for b in direct] == [200] * 3
    # epoch 0 of n + 1 steps is pass 0 then pass 1's first batch
    raw1, y1 = next(pipe.batches(1))
    np.testing.assert_array_equal(cut[-1][1].numpy(), y1)
    np.testing.assert_allclose(cut[-1][0].numpy(), pipe.normalise_np(raw1), rtol=0, atol=0)
    # the last two batches of pass 1, then pass 2's first: one stream
    raw2, y2 = next(pipe.batches(2))
    np.testing.assert_array_equal(direct[2][1].numpy(), y2)
    assert direct[0][0].dtype == tf.float32 and direct[0][1].dtype == tf.int32
    ev = pipeline.eval_batches("cifar10", "test", CIFAR, 400, max_batches=2)
    got = list(ev)
    assert [len(y) for _, y in got] == [400, 400] and len(list(ev)) == 2  # re-iterable
    t = _numpy_cifar_test().astype(np.float64)
    mean = np.concatenate([_numpy_cifar_train().astype(np.float64), t]).mean(axis=0)
    np.testing.assert_allclose(got[0][0], (t[:400] - mean) / 128.0, atol=1e-5)
    assert len(list(pipeline.eval_batches("cifar10", "test", CIFAR, 400))) == 3  # 1017


def test_a_pass_cut_short_does_not_repeat_its_batches():
    # A pass that yields fewer batches than num_batches (undecodable ImageNet images
    # skipped) ends there; the stream goes on with the next pass's first batch, and
    # still serves as many batches as asked.
    class Short:
        image_shape, num_batches = (1, 1, 1), 3

        def batches(self, data_pass):
            for i in range(2 if data_pass == 0 else 3):
                yield np.full((2, 1, 1, 1), 100 * data_pass + i, np.float32), np.zeros(2)

        def normalise_np(self, x):
            return x

    got = [int(x[0, 0, 0, 0]) for x, _ in pipeline.stream_batches(Short(), 0, 6)]
    assert got == [0, 1, 100, 101, 102, 200]
    assert [int(x[0, 0, 0, 0]) for x, _ in pipeline.stream_batches(Short(), 4, 7)] == [
        101,
        102,
        200,
    ]


def test_too_many_undecodable_through_tf_data_is_the_one_line_user_error(tmp_path):
    # tf.data turns the generator's exception into an OpError with a traceback;
    # user_errors_from gives back the pipeline's own UserError.
    import tensorflow as tf

    _imagenet(tmp_path)
    pipe = pipeline.make_pipeline("imagenet", "train", tmp_path, 2, train=True, seed=0)
    with pytest.raises(tf.errors.OpError):
        list(pipe.dataset(0))
    with pytest.raises(pipeline.TooManyBadImages) as err:
        with pipeline.user_errors_from(pipe):
            list(pipe.dataset(0))
    assert "undecodable" in str(err.value) and "\n" not in str(err.value)
    assert pipe.failure is err.value
    with pytest.raises(tf.errors.OpError):  # other TF errors pass through untouched
        with pipeline.user_errors_from(pipe):
            pipe.failure = None
            tf.debugging.assert_equal(tf.constant(1), tf.constant(2))


def test_skipped_images_reported_when_the_consumer_stops_early(tmp_path, monkeypatch, caplog):
    _, truth, bad = _imagenet(tmp_path)
    monkeypatch.setattr(pipeline, "MAX_BAD_FRACTION", 0.5)
    # In file order the corrupt file is the 6th: one batch of 6 holds it.
    pipe = pipeline.make_pipeline("imagenet", "train", tmp_path, 6, train=False)
    assert pipe.source.paths.index(str(bad)) < 6
    with caplog.at_level("WARNING"):
        gen = pipe.batches(0)
        x, y = next(gen)  # a capped epoch (steps_per_epoch) stops here
        gen.close()
    assert len(y) == 6 and pipe.reports[-1].skipped == 1 and pipe.reports[-1].epoch == 0
    assert str(bad) in caplog.text


def test_imagenet_normalisation_is_spec(tmp_path):
    from test_data_readers import write_imagenet_tree

    write_imagenet_tree(tmp_path / "imagenet", np.random.default_rng(10), corrupt=False)
    pipe = pipeline.make_pipeline("imagenet", "val", tmp_path, 4, train=False)
    raw, _ = next(pipe.batches(0))
    x, _ = next(iter(pipe.dataset(0)))
    want = (raw / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x.numpy(), want, atol=1e-5)


def test_imagenet_authors_bgr_option_normalises_bgr_with_rgb_constants(tmp_path):
    # The authors' bug: cv2.imread's BGR image normalised with the RGB mean/std in RGB
    # order. Same raw (RGB) batch; the option reverses the channels before normalising.
    from test_data_readers import write_imagenet_tree

    write_imagenet_tree(tmp_path / "imagenet", np.random.default_rng(10), corrupt=False)
    rgb = pipeline.make_pipeline("imagenet", "val", tmp_path, 4, train=False)
    bgr = pipeline.make_pipeline(
        "imagenet", "val", tmp_path, 4, train=False, imagenet_channel_order="authors-bgr"
    )
    raw, _ = next(rgb.batches(0))
    raw2, _ = next(bgr.batches(0))
    np.testing.assert_array_equal(raw, raw2)  # augmentation unchanged
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x_rgb = next(iter(rgb.dataset(0)))[0].numpy()
    x_bgr = next(iter(bgr.dataset(0)))[0].numpy()
    want = (raw[..., ::-1] / 255.0 - mean) / std
    np.testing.assert_allclose(x_bgr, want, atol=1e-5)
    np.testing.assert_allclose(bgr.normalise_np(raw), want, atol=1e-5)
    # Channel 0 of the authors' input is blue, normalised with red's mean and std.
    np.testing.assert_allclose(x_bgr[..., 0], (raw[..., 2] / 255.0 - 0.485) / 0.229, atol=1e-5)
    # The green channel is shared; the outer two differ from the correct RGB input.
    np.testing.assert_allclose(x_bgr[..., 1], x_rgb[..., 1], atol=1e-5)
    assert np.abs(x_bgr[..., 0] - x_rgb[..., 2]).max() > 0.05
    # Other datasets ignore it; unknown values are a UserError.
    if CIFAR.is_dir():
        cifar = pipeline.make_pipeline(
            "cifar10", "test", CIFAR, 100, train=False, imagenet_channel_order="authors-bgr"
        )
        assert cifar.channel_order == "rgb"
    with pytest.raises(UserError, match="imagenet_channel_order"):
        pipeline.make_pipeline(
            "imagenet", "val", tmp_path, 4, train=False, imagenet_channel_order="bgr"
        )
    with pytest.raises(UserError, match="imagenet_saturation"):
        pipeline.make_pipeline(
            "imagenet", "val", tmp_path, 4, train=False, imagenet_saturation="wrap"
        )
    wrap = pipeline.make_pipeline(
        "imagenet", "train", tmp_path, 2, train=True, imagenet_saturation="authors-wrap"
    )
    sat = wrap.augmentors.augmentors[1].aug_lists[2]
    assert type(sat).__name__ == "SaturationWrap"


@needs_shared
def test_worker_processes_resume_mid_epoch_like_serial():
    serial = pipeline.make_pipeline("cifar10", "train", CIFAR, 256, train=True, seed=3)
    par = pipeline.make_pipeline("cifar10", "train", CIFAR, 256, train=True, seed=3, workers=2)
    full = _take(serial, 4)
    resumed = _take(par, 4, start=15)
    assert len(resumed) == len(full) - 15 == 4
    for (xa, ya), (xb, yb) in zip(full[15:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@needs_shared
def test_data_dir_defaults_to_epsresnet_data(monkeypatch):
    monkeypatch.setenv("EPSRESNET_DATA", str(CIFAR))
    pipe = pipeline.make_pipeline("cifar10", "test", batch_size=100, train=False)
    assert len(pipe.source) == 1017
    monkeypatch.setenv("EPSRESNET_DATA", str(CIFAR / "nowhere"))
    with pytest.raises(UserError, match="nowhere"):
        pipeline.make_pipeline("cifar10", "test", batch_size=100, train=False)
