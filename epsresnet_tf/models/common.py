"""Input handling shared by the convolutional families."""

import keras


def image_input(input_shape, data_format, name="image"):
    """Models take NHWC images (what the data pipelines give) whatever their data format;
    a channels_first model transposes once at its input, for GPUs."""
    inputs = keras.Input(shape=tuple(input_shape), name=name)
    x = inputs
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    return inputs, x
