"""Model zoo: one builder per family, resolved by name through `registry`.

`available`, `build_model` and `resolve` are the registry's, imported on first use (PEP 562):
`models.describe` declares a subcommand for every `epsresnet` call, which should not import
Keras (the builders do).
"""

__all__ = ["available", "build_model", "resolve"]


def __getattr__(name: str):
    if name in __all__:
        from epsresnet_tf.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
