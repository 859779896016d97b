from typing import NamedTuple

from .._options import Inputs, Option
from . import _cnn, _lstm, _mamba, _mlp, _resnet, _transformer, _vit
from ._declared import DECLARED


class Architecture(NamedTuple):
    """A named architecture: its Module, its declared options and the inputs it takes.

    The Module is built as `model(first, out_size, **options, dtype=..., key=...)`, where
    `first` is the input dimension (`"vectors"`: images are flattened), the image shape
    `(channels, height, width)` (`"images"`) or the vocabulary size (`"tokens"`).
    """

    model: type
    options: dict[str, Option]
    inputs: Inputs


_MODELS: dict[str, type] = {
    "mlp": _mlp.MLP,
    "cnn": _cnn.CNN,
    "resnet": _resnet.ResNet,
    "vit": _vit.ViT,
    "lstm": _lstm.LSTM,
    "transformer": _transformer.Transformer,
    "mamba": _mamba.Mamba,
}

# The options are declared in `_declared.py`, jax-free, for the command line.
ARCHITECTURES: dict[str, Architecture] = {
    name: Architecture(_MODELS[name], declared.options, declared.inputs)
    for name, declared in DECLARED.items()
}
