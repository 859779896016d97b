"""Central flows: the time-averaged dynamics of optimizers at the edge of stability.

Public names are imported on first use, so `import centralflows` (and the command line,
until a run starts) does not import jax.
"""

from typing import TYPE_CHECKING

from ._lazy import attach

if TYPE_CHECKING:
    from ._cache import enable_compilation_cache as enable_compilation_cache
    from ._discrete import DiscreteRun as DiscreteRun
    from ._discrete import discrete_losses as discrete_losses
    from ._discrete import discrete_run as discrete_run
    from ._eigen import EigConfig as EigConfig
    from ._eigen import EigenState as EigenState
    from ._eigen import track_eigs as track_eigs
    from ._flows import CentralFlow as CentralFlow
    from ._flows import FlowState as FlowState
    from ._flows import StableFlow as StableFlow
    from ._integrate import FlowOptions as FlowOptions
    from ._objective import Objective as Objective
    from ._optimizers import GD as GD
    from ._optimizers import AbstractDiagonalOptimizer as AbstractDiagonalOptimizer
    from ._optimizers import AbstractOptimizer as AbstractOptimizer
    from ._optimizers import RMSProp as RMSProp
    from ._optimizers import ScalarRMSProp as ScalarRMSProp
    from ._plot import plot as plot
    from ._regime_map import RegimeMap as RegimeMap
    from ._regime_map import regime_map as regime_map
    from ._regimes import SolverError as SolverError
    from ._run import run as run
    from ._runfile import Checkpoint as Checkpoint
    from ._runfile import Run as Run
    from ._runfile import RunFileError as RunFileError
    from ._runfile import load_checkpoint as load_checkpoint
    from ._runfile import load_run as load_run
    from ._sdcp import SDCPSolution as SDCPSolution
    from ._sdcp import sdcp_solve as sdcp_solve
    from ._solve import FlowSolution as FlowSolution
    from ._solve import central_flow as central_flow
    from ._solve import stable_flow as stable_flow
    from ._stop import StopReason as StopReason

    __version__: str

_EXPORTS = {
    "enable_compilation_cache": "._cache",
    "DiscreteRun": "._discrete",
    "discrete_losses": "._discrete",
    "discrete_run": "._discrete",
    "EigConfig": "._eigen",
    "EigenState": "._eigen",
    "track_eigs": "._eigen",
    "CentralFlow": "._flows",
    "FlowState": "._flows",
    "StableFlow": "._flows",
    "FlowOptions": "._integrate",
    "Objective": "._objective",
    "GD": "._optimizers",
    "AbstractDiagonalOptimizer": "._optimizers",
    "AbstractOptimizer": "._optimizers",
    "RMSProp": "._optimizers",
    "ScalarRMSProp": "._optimizers",
    "plot": "._plot",
    "RegimeMap": "._regime_map",
    "regime_map": "._regime_map",
    "SolverError": "._regimes",
    "run": "._run",
    "Checkpoint": "._runfile",
    "Run": "._runfile",
    "RunFileError": "._runfile",
    "load_checkpoint": "._runfile",
    "load_run": "._runfile",
    "SDCPSolution": "._sdcp",
    "sdcp_solve": "._sdcp",
    "FlowSolution": "._solve",
    "central_flow": "._solve",
    "stable_flow": "._solve",
    "StopReason": "._stop",
    "__version__": "._version",
}
__all__ = [name for name in _EXPORTS if name != "__version__"]
__getattr__, __dir__ = attach(__name__, _EXPORTS)
