"""The checks: a net's logits on the check (test) batches as given or split into smaller
batches (what a client feeding fewer images at a time sees), and two nets' logits compared
(and, on labelled data, their top-1 errors)."""

from typing import TYPE_CHECKING, Any

import numpy as np

from epsresnet_tf.data.batches import iter_images

if TYPE_CHECKING:
    import keras

#: Tolerance (docs/semantics.md) for the equivalence check on CPU.
TOLERANCE = 1e-5

#: The batch a deployed net is checked at besides the run's: one image, as TFLite's default
#: input shape and most clients feed it.
CLIENT_BATCH = 1


def logits_of(outputs: Any) -> Any:
    """The prediction logits of a model output (a dict when the side head is present)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def rebatched(data: Any, batch: int | None = None, limit: int | None = None):
    """The check's items (images, or (images, labels)) in batches of at most `batch` images
    (None: as given), the same images in the same order; `limit`: the first `limit` only."""
    seen = 0
    for item in data:
        labelled = isinstance(item, (tuple, list)) and len(item) > 1
        x = next(iter_images([item]))
        y = np.asarray(item[1]) if labelled else None
        step = batch or len(x)
        for i in range(0, len(x), step):
            if limit is not None and seen >= limit:
                return
            n = step if limit is None else min(step, limit - seen)
            seen += len(x[i : i + n])
            yield (x[i : i + n], y[i : i + n]) if labelled else x[i : i + n]


def predict(
    net: "keras.Model",
    data: Any,
    batch: int | None = None,
    limit: int | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, "np.ndarray | None", int]:
    """(float32 logits of every image, their labels or None, batches run) of `net` in
    inference mode over `data` rebatched to `batch` images (`rebatched`)."""
    import tensorflow as tf

    def run():
        f = tf.function(lambda x: logits_of(net(x, training=False)), reduce_retracing=True)
        out, labels, batches = [], [], 0
        for item in rebatched(data, batch, limit):
            x = item[0] if isinstance(item, tuple) else item
            out.append(np.asarray(tf.cast(f(tf.convert_to_tensor(x)), tf.float32)))
            labels.append(item[1] if isinstance(item, tuple) else None)
            batches += 1
        logits = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
        known = bool(labels) and all(y is not None for y in labels)
        return logits, (np.concatenate(labels) if known else None), batches

    if device == "cpu":
        with tf.device("/CPU:0"):
            return run()
    return run()


def compare(
    a: np.ndarray, b: np.ndarray, labels: "np.ndarray | None", tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """Two nets' logits of the same images: max |difference|, "passed" (within `tolerance`),
    top-1 agreement and, with labels, each one's top-1 error."""
    out = {
        "max_abs_logit_diff": float(np.max(np.abs(a - b))) if a.size else 0.0,
        "tolerance": tolerance,
        "images": len(a),
        "same_top1": int(np.sum(a.argmax(-1) == b.argmax(-1))) if a.size else 0,
    }
    out["passed"] = bool(out["max_abs_logit_diff"] <= tolerance)
    if labels is not None and len(a):  # top-1 errors of both nets on the check's images
        out.update(
            error_full=float(np.mean(a.argmax(-1) != labels)),
            error_reduced=float(np.mean(b.argmax(-1) != labels)),
        )
    return out


def check_equivalence(
    full: "keras.Model",
    reduced: "keras.Model",
    data: Any,
    tolerance: float = TOLERANCE,
    device: str = "cpu",
    batch: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run both nets on the same batches (inference mode; `batch`, `limit`: `rebatched`)
    and compare their logits."""
    a, labels, batches = predict(full, data, batch, limit, device)
    b, _, _ = predict(reduced, data, batch, limit, device)
    return {**compare(a, b, labels, tolerance), "batches": batches, "device": device}


class Logits:
    """Logits of nets over one check set (`predict`), each (net, batch) computed once: the
    checks at the run's batch and at CLIENT_BATCH share them. `client_images`: how many
    images the CLIENT_BATCH runs see (None: all)."""

    def __init__(self, data: Any, device: str = "cpu", client_images: int | None = None):
        self.data, self.device, self.client_images = data, device, client_images
        self._memo = {}  # (id(net), batch) -> (net, result): the net kept so ids stay unique

    def __call__(self, net: "keras.Model", batch: int | None = None):
        key = (id(net), batch)
        if key not in self._memo:
            limit = self.client_images if batch is not None else None
            self._memo[key] = (net, predict(net, self.data, batch, limit, self.device))
        return self._memo[key][1]

    def compare(self, a_net, b_net, batch=None, tolerance=TOLERANCE, a_batch="same"):
        """`compare` of two nets' logits at `batch` (`a_batch`: another batching for the
        first, e.g. the run's against CLIENT_BATCH: the same net alone and in a batch)."""
        a, labels, batches = self(a_net, batch if a_batch == "same" else a_batch)
        b, labels_b, _ = self(b_net, batch)
        n = min(len(a), len(b))  # a CLIENT_BATCH run may see only the first images
        labels = labels_b if labels_b is not None else labels
        out = compare(a[:n], b[:n], None if labels is None else labels[:n], tolerance)
        return {**out, "batches": batches if batch is None else n, "device": self.device}


def check_at_client_batches(
    full: "keras.Model", reduced: "keras.Model", logits: Logits, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """The equivalence check at the run's batch and, under "batch_1", at CLIENT_BATCH:
    "passed" only when both pass."""
    at_run = logits.compare(full, reduced, None, tolerance)
    at_client = logits.compare(full, reduced, CLIENT_BATCH, tolerance)
    return {
        **at_run,
        "passed_at_run_batch": at_run["passed"],
        "passed": at_run["passed"] and at_client["passed"],
        "batch_1": at_client,
    }
