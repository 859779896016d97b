from typing import Literal, NamedTuple

from .._options import Option
from . import _cnn, _lstm, _mamba, _mlp, _resnet, _transformer, _vit

Inputs = Literal["vectors", "images", "tokens"]


class Architecture(NamedTuple):
    """A named architecture: its Module, its declared options and the inputs it takes.

    The Module is built as `model(first, out_size, **options, dtype=..., key=...)`, where
    `first` is the input dimension (`"vectors"`: images are flattened), the image shape
    `(channels, height, width)` (`"images"`) or the vocabulary size (`"tokens"`).
    """

    model: type
    options: dict[str, Option]
    inputs: Inputs


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(_mlp.MLP, _mlp.OPTIONS, "vectors"),
    "cnn": Architecture(_cnn.CNN, _cnn.OPTIONS, "images"),
    "resnet": Architecture(_resnet.ResNet, _resnet.OPTIONS, "images"),
    "vit": Architecture(_vit.ViT, _vit.OPTIONS, "images"),
    "lstm": Architecture(_lstm.LSTM, _lstm.OPTIONS, "tokens"),
    "transformer": Architecture(_transformer.Transformer, _transformer.OPTIONS, "tokens"),
    "mamba": Architecture(_mamba.Mamba, _mamba.OPTIONS, "tokens"),
}
