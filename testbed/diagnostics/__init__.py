"""Per-layer diagnostics computed from one forward/backward pass."""

from testbed.diagnostics.layers import layer_metrics, per_layer, saturation

__all__ = ["layer_metrics", "per_layer", "saturation"]
