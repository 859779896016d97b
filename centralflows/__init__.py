"""Central flows: the time-averaged dynamics of optimizers at the edge of stability."""

import importlib.metadata

from ._eigen import EigConfig as EigConfig, EigenState as EigenState, track_eigs as track_eigs
from ._objective import Objective as Objective
from ._optimizers import (
    AbstractDiagonalOptimizer as AbstractDiagonalOptimizer,
    AbstractOptimizer as AbstractOptimizer,
    GD as GD,
    RMSProp as RMSProp,
    ScalarRMSProp as ScalarRMSProp,
)
from ._run import run as run
from ._runfile import Run as Run, load_run as load_run

__version__ = importlib.metadata.version("centralflows")
