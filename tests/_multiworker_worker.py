"""One process of tests/test_train_multiworker.py: `python _multiworker_worker.py OUT MODE`.

MODE "single": the single-device run into OUT/single. MODE "worker": one worker of the
MultiWorkerMirroredStrategy run into OUT/multi (TF_CONFIG names the cluster and this task;
the strategy comes from `make_strategy`, as in `epsresnet train`). Prints one line
"RESULT {json}" with the run's summary."""

import json
import sys

import numpy as np


class Doubled:
    """Every global batch is a batch A stacked twice: each of two replicas gets exactly A,
    the single device gets [A; A] — the same BatchNorm statistics, gate T and mean loss."""

    image_shape, num_classes, num_batches = (8, 8, 3), 10, 3

    def batches(self, epoch):
        rng = np.random.default_rng(epoch)
        for _ in range(self.num_batches):
            a = rng.normal(size=(4, 8, 8, 3)).astype(np.float32) * 2
            y = rng.integers(0, 10, 4).astype(np.int32)
            yield np.concatenate([a, a]), np.concatenate([y, y])

    def normalise_np(self, x):
        return x


#: ε = 0 in the first epoch, then 4 (which discards blocks on these inputs); the adaptive
#: schedule resets the lr once the discarded count has grown by 0.2 in an epoch.
BASE = {
    "arch": "cifar-basic-8",
    "epochs": 3,
    "val_steps": 1,
    "histogram_every": 1,
    "epsilon": 4.0,
    "epsilon_start_epoch": 1,
    "deterministic": True,
    "lr_schedule": [[0, 0.02], [2, 0.01]],
    "adaptive_schedule": [[0, 0.03], [9, 0.001]],
    "reset_threshold": 0.2,
    "steps_per_epoch": 3,
}  # the same steps per epoch (by default 2 replicas make 2 passes)


def main(out, mode):
    from epsresnet_tf.config import resolve_config
    from epsresnet_tf.train.loop import run_training

    if mode == "single":
        import tensorflow as tf

        cfg, strategy, folder = dict(BASE, batch_size=8), tf.distribute.get_strategy(), "single"
    else:
        cfg, strategy, folder = dict(BASE, batch_size=4), None, "multi"  # 4 per replica
    result = run_training(
        resolve_config(cfg),
        f"{out}/{folder}",
        sources=(Doubled(), Doubled()),
        strategy=strategy,
        verbose=0,
    )
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
