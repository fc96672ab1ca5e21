"""Algorithms on any :class:`tf_sharpest.operators.LinearOperator`: eigenpairs, trace, diagonal, spectral density."""

from tf_sharpest.linalg._density import MomentEstimate, SpectralDensity, spectral_density
from tf_sharpest.linalg._lanczos import lanczos
from tf_sharpest.linalg._lobpcg import lobpcg
from tf_sharpest.linalg._result import EigenResult
from tf_sharpest.linalg._solvers import LanczosSolver, LOBPCGSolver, SolverResult
from tf_sharpest.linalg._stderr import BatchProjections, batch_rayleigh_quotients, sampling_stderr
from tf_sharpest.linalg._trace import DiagonalResult, TraceResult, diagonal, trace

__all__ = ["lanczos", "lobpcg", "EigenResult", "trace", "diagonal", "TraceResult", "DiagonalResult",
           "spectral_density", "SpectralDensity", "MomentEstimate"]
__all__ += ["LanczosSolver", "LOBPCGSolver", "SolverResult"]
__all__ += ["sampling_stderr", "batch_rayleigh_quotients", "BatchProjections"]
