"""What every consumer of evaluation batches needs (gates' responses, compression's check,
evaluate): the images of each batch, whatever the batch's form. numpy only."""

import numpy as np


def iter_images(data):
    """Images of each batch; `data` yields images or (images, labels)."""
    for item in data:
        x = item[0] if isinstance(item, (tuple, list)) else item
        yield np.asarray(x, np.float32) if isinstance(x, (np.ndarray, list)) else x
