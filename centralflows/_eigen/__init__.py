"""Eigen tracking: LOBPCG, the tracked eigenpairs of the effective Hessian, and their
derivative."""

from ._basis import eigenbasis as eigenbasis
from ._lobpcg import TOL_FLOOR as TOL_FLOOR
from ._lobpcg import below as below
from ._lobpcg import lobpcg as lobpcg
from ._lobpcg import masked_products as masked_products
from ._solve import EigConfig as EigConfig
from ._solve import EigenState as EigenState
from ._solve import preconditioner_diagonal as preconditioner_diagonal
from ._solve import random_vectors as random_vectors
from ._solve import track_eigs as track_eigs
from ._tracking import Tracking as Tracking
from ._tracking import above_threshold as above_threshold
from ._tracking import eig_record as eig_record
from ._tracking import grow_tracking as grow_tracking
from ._tracking import init_tracking as init_tracking
from ._tracking import most_tracked as most_tracked
from ._tracking import refresh_tracking as refresh_tracking
