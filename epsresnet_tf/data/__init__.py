"""Datasets: official-format readers, docs/semantics.md §10 augmentation, DataFlow -> tf.data pipelines.

    from epsresnet_tf.data.pipeline import make_dataset, dataset_info

See :mod:`epsresnet_tf.data.pipeline` for the API. Kept import-light on purpose (no
TensorFlow/tensorpack here) so that `python -m epsresnet_tf.data.download` starts fast.
"""
