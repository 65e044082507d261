"""DIFFMASK: differentiable masking with Hard Concrete gates (De Cao et al., EMNLP 2020)."""

from attribution_analysis.methods.diffmask.diffmask import DIFFMASK
from attribution_analysis.methods.diffmask.probe_network import (
    ProbeLayer,
    ProbeNetwork,
    SimpleProbeNetwork,
)
from attribution_analysis.methods.diffmask.stochastic_gates import HardConcrete, StochasticGates

__all__ = [
    "DIFFMASK",
    "HardConcrete",
    "ProbeLayer",
    "ProbeNetwork",
    "SimpleProbeNetwork",
    "StochasticGates",
]
