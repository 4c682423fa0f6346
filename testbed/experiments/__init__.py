"""The classic results as presets: each module runs (or measures) and checks one claim set.

The order is the report's. See ``base.py`` for what a preset module provides.
"""

from __future__ import annotations

import importlib

PRESETS = (
    "vanishing", "exploding", "he_vs_xavier", "sgd_vs_adam", "lr_failure", "mean_field",
    "orthogonal", "universal_approx", "minibatch_noise", "interpolation", "random_labels",
    "feature_viz", "xor_encoder", "backward_cost",
)


def load_preset(name: str):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return importlib.import_module(f"testbed.experiments.{name}")
