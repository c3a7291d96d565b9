"""The method, modality-agnostic: path, (t, r) sampling, L_CMFM with an exact JVP, the RMFlow objective, the
pairings of its likelihood term, sources (incl. guided encoding), the refinements and the samplers. Nothing here
knows about molecules, images or text: a task hands over a network u(x, t, r, cond, mask), a space and data
batches. Nothing here reads a config either: rmflow.train.build turns a config into these objects."""
from .cmfm import ClassifierFreeGuidance, CMFMLoss, GuidanceDraw, masked_sq_norm
from .jvp import mean_velocity_time_derivative, unwrap
from .likelihood import OneStepLikelihood, flow_matching_log_likelihood, one_step_log_likelihood
from .model import RMFlow
from .objective import LikelihoodSchedule, ObjectiveOutput, RMFlowObjective
from .pairing import (PAIRINGS, IndependentPairing, InversePairing, MinibatchOTPairing, Pairing, Pairs, SelfPairing,
                      minibatch_ot_permutation, transport_cost)
from .path import LinearPath, PathSample
from .refine import FixedScale, LearnedScale, MixtureRefiner, Refiner, scale_nll
from .rows import cat_rows, cond_rows, null_condition, to_device
from .samplers import SampleResult, cfg_combine, flow_matching_ode, meanflow, one_step, sample, takes_guidance
from .sources import GaussianSource, GuidedSource
from .space import EuclideanSpace
from .teacher import TeacherPairing
from .times import TimeSampler

__all__ = [
    "CMFMLoss", "masked_sq_norm", "mean_velocity_time_derivative", "unwrap", "RMFlow", "LikelihoodSchedule",
    "ObjectiveOutput", "RMFlowObjective", "PAIRINGS", "IndependentPairing", "InversePairing", "MinibatchOTPairing",
    "Pairing", "Pairs", "SelfPairing", "TeacherPairing", "minibatch_ot_permutation", "transport_cost", "LinearPath",
    "PathSample", "FixedScale", "LearnedScale", "MixtureRefiner", "Refiner", "scale_nll", "cat_rows", "cond_rows",
    "to_device", "SampleResult", "flow_matching_ode", "meanflow", "one_step", "sample", "GaussianSource",
    "GuidedSource", "EuclideanSpace", "TimeSampler",
    "OneStepLikelihood", "flow_matching_log_likelihood", "one_step_log_likelihood",
    "ClassifierFreeGuidance", "GuidanceDraw", "null_condition", "cfg_combine", "takes_guidance",
]
