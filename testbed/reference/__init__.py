"""The PyTorch reference: torch.nn + torch.optim, built from the engine's spec and weights (``model``),
and ``Lockstep``, the engine and the reference trained side by side on ``testbed.training``'s steps."""

from testbed.reference.lockstep import Lockstep, StepComparison, relative_error
from testbed.reference.model import (
    build_torch_loss,
    build_torch_mlp,
    build_torch_optimizer,
    torch_named_params,
)

__all__ = ["Lockstep", "StepComparison", "build_torch_loss", "build_torch_mlp",
           "build_torch_optimizer", "relative_error", "torch_named_params"]
