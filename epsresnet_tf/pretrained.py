"""The weights `train --init-from-keras FILE` (config key `weights`) starts a run with: a
Keras file the user holds (nothing is downloaded here), copied into the run's gated net by
layer name.

    keras_file_weights(path, net, plain) -> (arrays, note)

FILE is one of Keras's own formats:
    .keras        a whole saved model (read with safe_mode: a file that would run code,
                  a Lambda layer's bytecode, is refused)
    .weights.h5   Keras 3's weights of the run's plain net (`plain()` builds it)
    .h5 / .hdf5   legacy HDF5 weights, matched by layer name (keras.applications' files)

Layers are matched by name because the gate transform keeps every original layer's name
(transform.gate_model): a file of the ungated net starts the gated one. A layer the file
does not hold with its shapes (the classifier of a 1000-class ImageNet file in a 10-class
run) keeps its fresh weights and is named in the note; a file that matches no layer is
refused.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np

from epsresnet_tf.errors import UserError

#: file suffix -> how Keras reads it (longest first: ".weights.h5" also ends in ".h5").
FORMATS = {
    ".weights.h5": "weights",
    ".keras": "model",
    ".hdf5": "legacy",
    ".h5": "legacy",
}


def file_format(path: str | os.PathLike) -> str:
    """ "model", "weights" or "legacy" by the file's suffix; UserError (one line) otherwise."""
    text = str(path)
    for suffix, kind in FORMATS.items():
        if text.endswith(suffix):
            return kind
    raise UserError(
        f"--init-from-keras {text}: not a Keras file; give a .keras, .weights.h5 or .h5 file"
    )


def _source_model(path: str, kind: str, plain: Callable):
    """The Keras model FILE's weights are read into, and the names of its layers that FILE
    left as they were (not in it, or of another shape)."""
    import keras

    try:
        if kind == "model":
            return keras.models.load_model(path, compile=False, safe_mode=True), []
        model = plain()
        # Keras's loaders skip a mismatched layer with a warning only: a layer still NaN
        # afterwards is one FILE did not fill.
        for v in model.variables:
            if "float" in str(v.dtype):
                v.assign(np.full(v.shape, np.nan, v.dtype))
        with warnings.catch_warnings():  # the note names the skipped layers once
            warnings.simplefilter("ignore", UserWarning)
            if kind == "weights":
                model.load_weights(path, skip_mismatch=True)
            else:
                model.load_weights(path, by_name=True, skip_mismatch=True)
    except (ValueError, TypeError, OSError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--init-from-keras {path}: Keras cannot read it into this run's net ({first}); "
            "give a file saved from the same architecture"
        ) from err
    unfilled = [
        layer.name
        for layer in model.layers
        if any(np.isnan(np.asarray(w.numpy(), np.float64)).any() for w in layer.weights)
    ]
    return model, unfilled


def keras_file_weights(path: str | os.PathLike, net, plain: Callable) -> tuple[list, str]:
    """The values of `net.variables` (in order) with every layer that FILE holds under the
    same name and shapes taken from FILE, the others as `net` has them; and one line that
    says how many layers came from FILE and which were skipped. `plain()` builds the run's
    net without gates, for the weights-only formats."""
    path = str(path)
    kind = file_format(path)
    if not os.path.isfile(path):
        raise UserError(f"--init-from-keras {path}: no such file; give a local Keras file")
    source, skipped = _source_model(path, kind, plain)
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    theirs = {name: layer for name, layer in theirs.items() if name not in skipped}
    values = {id(v): v.numpy() for v in net.variables}
    taken = 0
    weighted = [layer for layer in net.layers if layer.weights]
    for layer in weighted:
        match = theirs.get(layer.name)
        if match is None:
            continue
        ours, other = layer.weights, match.weights
        if [tuple(v.shape) for v in ours] != [tuple(v.shape) for v in other]:
            skipped.append(layer.name)
            continue
        for v, w in zip(ours, other):
            values[id(v)] = w.numpy()
        taken += 1
    if not taken:
        raise UserError(
            f"--init-from-keras {path}: no layer of it has a name and shape of this run's net; "
            "give a file saved from the same architecture"
        )
    note = f"{taken} layers from {path}"
    if skipped:
        note += f" (kept fresh, not in it with this shape: {', '.join(skipped)})"
    return [values[id(v)] for v in net.variables], note
