from .base import (
    GD as GD,
)
from .base import (
    AbstractDiagonalOptimizer as AbstractDiagonalOptimizer,
)
from .base import (
    AbstractOptimizer as AbstractOptimizer,
)
from .base import (
    GDState as GDState,
)
from .rmsprop import (
    RMSProp as RMSProp,
)
from .rmsprop import (
    RMSPropState as RMSPropState,
)
from .rmsprop import (
    ScalarRMSProp as ScalarRMSProp,
)
