"""Central flows: the time-averaged dynamics of optimizers at the edge of stability."""

import importlib.metadata

from ._eigen import EigConfig as EigConfig, EigenState as EigenState, track_eigs as track_eigs
from ._flows import (
    CentralFlow as CentralFlow,
    FlowState as FlowState,
    StableFlow as StableFlow,
)
from ._integrate import FlowOptions as FlowOptions
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
from ._sdcp import SDCPSolution as SDCPSolution, sdcp_solve as sdcp_solve
from ._solve import (
    FlowSolution as FlowSolution,
    central_flow as central_flow,
    stable_flow as stable_flow,
)

__version__ = importlib.metadata.version("centralflows")
