"""What every consumer of evaluation batches needs (gates' responses, compression's check,
evaluate): the images of each batch, whatever the batch's form. numpy only."""

import numpy as np


def iter_images(data):
    """Images of each batch; `data` yields images or (images, labels)."""
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, (np.ndarray, list)):  # uint8 stays: a raw-image net's input
            x = np.asarray(x)
            x = x if x.dtype == np.uint8 else x.astype(np.float32, copy=False)
        yield x
