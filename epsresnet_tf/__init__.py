"""epsilon-ResNet (Yu et al., CVPR 2018) in TensorFlow/Keras.

Data flows one way: recipe -> data pipeline -> model -> training loop -> run folder
-> compression -> report; each stage is a module of its own.
"""

from epsresnet_tf.transform import gate_model  # the API for your own Keras net (light: no TF)

__all__ = ["gate_model"]
__version__ = "0.1.0"
