"""Fitted read-outs: a probe on the model's hidden state under a policy's prompt.

`ReadOut` is the artefact (bound to the policy text, the model file and the prompt layout);
`magistrate.readout.fit` holds the numbers (cross-validation, operating points, review
bands); `magistrate.readout.collect` gathers hidden states through the one judge and
builds a read-out (`fit_readout`), which `magistrate fit` calls.
"""

from magistrate.readout.artefact import (
    SCHEMA,
    Binding,
    CrossValidation,
    OperatingPoint,
    ReadOut,
    ReadOutDocument,
    ReadOutMismatch,
    TrainingData,
)
from magistrate.readout.fit import Target

__all__ = [
    "SCHEMA",
    "Binding",
    "CrossValidation",
    "OperatingPoint",
    "ReadOut",
    "ReadOutDocument",
    "ReadOutMismatch",
    "Target",
    "TrainingData",
]
