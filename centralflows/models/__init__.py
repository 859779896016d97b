"""The architectures and losses of the model zoo, imported on first use (see
`centralflows._lazy`); `_declared` holds their config options without jax."""

from typing import TYPE_CHECKING

from .._lazy import attach

if TYPE_CHECKING:
    from ._cnn import CNN as CNN
    from ._layers import GroupNorm as GroupNorm
    from ._layers import LayerNorm as LayerNorm
    from ._layers import RMSNorm as RMSNorm
    from ._losses import MSE as MSE
    from ._losses import AbstractLoss as AbstractLoss
    from ._losses import CrossEntropy as CrossEntropy
    from ._losses import accuracy as accuracy
    from ._losses import cross_entropy as cross_entropy
    from ._losses import mse as mse
    from ._lstm import LSTM as LSTM
    from ._mamba import Mamba as Mamba
    from ._mlp import MLP as MLP
    from ._resnet import ResNet as ResNet
    from ._transformer import Transformer as Transformer
    from ._vit import ViT as ViT
    from ._zoo import ARCHITECTURES as ARCHITECTURES
    from ._zoo import Architecture as Architecture

_EXPORTS = {
    "CNN": "._cnn",
    "GroupNorm": "._layers",
    "LayerNorm": "._layers",
    "RMSNorm": "._layers",
    "MSE": "._losses",
    "AbstractLoss": "._losses",
    "CrossEntropy": "._losses",
    "accuracy": "._losses",
    "cross_entropy": "._losses",
    "mse": "._losses",
    "LSTM": "._lstm",
    "Mamba": "._mamba",
    "MLP": "._mlp",
    "ResNet": "._resnet",
    "Transformer": "._transformer",
    "ViT": "._vit",
    "ARCHITECTURES": "._zoo",
    "Architecture": "._zoo",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = attach(__name__, _EXPORTS)
