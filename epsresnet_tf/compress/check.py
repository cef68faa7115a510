"""The equivalence check: the trained and the reduced net on the same batches, their logits
compared (and, on labelled data, their top-1 errors)."""

from typing import TYPE_CHECKING, Any

import numpy as np

from epsresnet_tf.data.batches import iter_images

if TYPE_CHECKING:
    import keras

#: Tolerance (docs/semantics.md) for the equivalence check on CPU.
TOLERANCE = 1e-5


def logits_of(outputs: Any) -> Any:
    """The prediction logits of a model output (a dict when the side head is present)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def check_equivalence(
    full: "keras.Model",
    reduced: "keras.Model",
    data: Any,
    tolerance: float = TOLERANCE,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run both nets on the same batches (inference mode) and compare logits."""
    import tensorflow as tf

    def run():
        worst, images, same, batches, wrong = 0.0, 0, 0, 0, [0, 0]
        labelled = True
        f_full = tf.function(lambda x: logits_of(full(x, training=False)), reduce_retracing=True)
        f_red = tf.function(lambda x: logits_of(reduced(x, training=False)), reduce_retracing=True)
        for item in data:
            x = next(iter_images([item]))
            x = tf.convert_to_tensor(x)
            a = np.asarray(tf.cast(f_full(x), tf.float32))
            b = np.asarray(tf.cast(f_red(x), tf.float32))
            worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
            same += int(np.sum(a.argmax(-1) == b.argmax(-1)))
            if isinstance(item, (tuple, list)) and len(item) > 1:
                y = np.asarray(item[1])
                wrong[0] += int(np.sum(a.argmax(-1) != y))
                wrong[1] += int(np.sum(b.argmax(-1) != y))
            else:
                labelled = False
            images += len(a)
            batches += 1
        return worst, images, same, batches, (wrong if labelled and images else None)

    if device == "cpu":
        with tf.device("/CPU:0"):
            worst, images, same, batches, wrong = run()
    else:
        worst, images, same, batches, wrong = run()
    out = {
        "max_abs_logit_diff": worst,
        "tolerance": tolerance,
        "passed": bool(worst <= tolerance),
        "images": images,
        "batches": batches,
        "same_top1": same,
        "device": device,
    }
    if wrong is not None:  # top-1 errors of both nets on the check's (test) images
        out.update(error_full=wrong[0] / images, error_reduced=wrong[1] / images)
    return out
