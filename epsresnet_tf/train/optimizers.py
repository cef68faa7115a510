"""TF1's momentum optimizer (`tf.train.MomentumOptimizer`) as a Keras 3 optimizer.

Why not `keras.optimizers.SGD`: the two keep different accumulators.

    TF1 (the authors' code):  accum ← m·accum + g;        w ← w − lr·accum
    TF1, use_nesterov=True:   accum ← m·accum + g;        w ← w − lr·(g + m·accum)
    Keras SGD:                v ← m·v − lr·g;             w ← w + v

In TF1's form the learning rate multiplies the whole accumulated momentum at every step,
so a change of lr rescales all past momentum at once; Keras's velocity already carries the
lr of the steps it was accumulated under. The two agree while lr is constant and differ
after every lr change: at each step of the schedule and, most, at an adaptive reset from a
small lr back to 0.1, where Keras's velocity is still small and TF1's accumulator is
multiplied by 0.1 straight away. See docs/semantics.md.

`TF1Momentum` follows Keras's own `SGD` (keras/src/optimizers/sgd.py): one slot per
variable created in `build`, updates through `self.assign`, so the base optimizer handles
`tf.distribute` strategies, mixed precision (Keras wraps it in `LossScaleOptimizer`) and
lists the slots in `optimizer.variables` (which the training loop checkpoints).
"""

import keras
from keras import ops

from epsresnet_tf.config import OPTIMIZERS
from epsresnet_tf.errors import UserError


@keras.saving.register_keras_serializable(package="epsresnet_tf")
class TF1Momentum(keras.optimizers.Optimizer):
    """Momentum SGD in TF1's accumulator form (see the module docstring).

    Args:
        learning_rate: float, schedule or callable, as for any Keras optimizer.
        momentum: float in [0, 1]; the authors use 0.9.
        nesterov: TF1's `use_nesterov=True` form (the authors' ImageNet runs).
        **kwargs: the base optimizer's keyword arguments (name, clipnorm, ...).
    """

    def __init__(
        self, learning_rate=0.01, momentum=0.9, nesterov=False, name="tf1_momentum", **kwargs
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be a float in [0, 1], got {momentum}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def build(self, variables):
        """One accumulator per variable (TF1 creates it even for momentum 0)."""
        if self.built:
            return
        super().build(variables)
        self.accumulators = self.add_optimizer_variables(variables, "accumulator")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        m = ops.cast(self.momentum, variable.dtype)
        accum = self.accumulators[self._get_variable_index(variable)]
        self.assign(accum, ops.add(ops.multiply(accum, m), g))
        if self.nesterov:
            self.assign_sub(variable, ops.multiply(ops.add(g, ops.multiply(accum, m)), lr))
        else:
            self.assign_sub(variable, ops.multiply(accum, lr))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


def make_optimizer(schedule) -> keras.optimizers.Optimizer:
    """SGD with momentum 0.9 (Nesterov on ImageNet) in TF1's form, Keras's SGD, or Nadam for
    the gates paper's MNIST nets (docs/semantics.md §3, §6), from a run's schedule section
    (runconfig.ScheduleSection); the lr starts at the schedule's first value."""
    name = schedule.optimizer
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    first_lr = schedule.lr_schedule[0][1]
    if name == "nadam":
        return keras.optimizers.Nadam(first_lr)
    if name in ("momentum", "nesterov"):
        return TF1Momentum(first_lr, momentum=schedule.momentum, nesterov=name == "nesterov")
    return keras.optimizers.SGD(
        first_lr, momentum=float(schedule.momentum), nesterov=name == "keras-nesterov"
    )
