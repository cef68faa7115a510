"""Independent numpy re-computations of the authors' arithmetic, for the tests to compare
the package against (written from the formulas in docs/semantics.md, not from the code)."""

import numpy as np


def tensorpack_ema(values, start_step=0, decay=0.95, initial=0.0):
    """tensorpack's moving summary in float32: TF1's ExponentialMovingAverage with
    num_updates = the global step (finished steps before each update), no zero-debias:
    d = min(decay, (1 + n) / (10 + n)); avg -= (avg - x) * (1 - d). Returns every value."""
    f = np.float32
    avg = f(initial)
    out = []
    for i, x in enumerate(values):
        n = f(start_step + i)
        d = min(f(decay), (f(1.0) + n) / (f(10.0) + n))
        avg = f(avg - (avg - f(x)) * (f(1.0) - d))
        out.append(avg)
    return out
