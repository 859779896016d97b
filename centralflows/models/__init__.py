from ._mlp import MLP as MLP
from ._mlp import accuracy as accuracy
from ._mlp import cross_entropy as cross_entropy
from ._mlp import mse as mse
