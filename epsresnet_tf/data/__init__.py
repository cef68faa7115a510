"""Datasets: one description per dataset, official-format readers, docs/semantics.md §10
augmentation, and the one DataFlow -> tf.data path.

    from epsresnet_tf.data import datasets          # datasets.get("cifar10"): the facts
    from epsresnet_tf.data.pipeline import make_pipeline, epochs_dataset, eval_batches

See :mod:`epsresnet_tf.data.datasets` (what each dataset is) and
:mod:`epsresnet_tf.data.pipeline` (how it is fed). Kept import-light on purpose (no
TensorFlow/tensorpack here) so that `python -m epsresnet_tf.data.download` starts fast.
"""
