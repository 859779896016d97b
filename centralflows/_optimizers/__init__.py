from .base import (
    AbstractDiagonalOptimizer as AbstractDiagonalOptimizer,
    AbstractOptimizer as AbstractOptimizer,
    GD as GD,
    GDState as GDState,
)
from .rmsprop import (
    RMSProp as RMSProp,
    RMSPropState as RMSPropState,
    ScalarRMSProp as ScalarRMSProp,
)
