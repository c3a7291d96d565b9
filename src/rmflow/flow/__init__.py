"""The method, modality-agnostic: path, (t, r) sampling, L_CMFM with an exact JVP, the RMFlow objective,
sources (incl. guided encoding), couplings, the refinement and the samplers. Nothing here knows about
molecules, images or text: a task hands over a network u(x, t, r, cond, mask), a space and data batches."""
from .jvp import mean_velocity_time_derivative, unwrap
from .meanflow import CMFMLoss, masked_sq_norm
from .model import RMFlow, cond_rows
from .objective import COUPLINGS, RMFlowObjective
from .pairing import PAIRINGS, minibatch_ot_permutation, transport_cost
from .path import LinearPath, PathSample
from .refine import FixedScale, LearnedScale, MixtureRefiner, scale_nll
from .samplers import SampleResult, flow_matching_ode, meanflow, one_step, sample
from .sources import GaussianSource, GuidedSource
from .space import EuclideanSpace
from .times import TimeSampler

__all__ = [
    "mean_velocity_time_derivative", "unwrap", "CMFMLoss", "masked_sq_norm", "RMFlow", "cond_rows",
    "RMFlowObjective", "COUPLINGS", "PAIRINGS", "minibatch_ot_permutation", "transport_cost", "LinearPath", "PathSample",
    "FixedScale", "LearnedScale", "MixtureRefiner", "scale_nll", "SampleResult", "flow_matching_ode", "meanflow", "one_step",
    "sample", "GaussianSource", "GuidedSource", "EuclideanSpace", "TimeSampler",
]
