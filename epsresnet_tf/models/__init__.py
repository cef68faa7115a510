"""Model zoo: one builder per family, resolved by name through `registry`."""

from epsresnet_tf.models.registry import available, build_model, resolve  # noqa: F401
