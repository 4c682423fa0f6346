"""The hand-written backpropagation engine: no autograd anywhere in it.

Read in this order: ``layers`` (the affine map), ``activations``,
``losses``, ``network`` (the MLP's forward and backward), ``init``,
``optim``. ``backend`` lets the same code run on numpy and torch arrays.
"""

from testbed.engine.activations import ACTIVATIONS, get_activation
from testbed.engine.backend import Backend, namespace, to_numpy
from testbed.engine.init import BIAS_INITS, WEIGHT_INITS, init_bias, init_weight
from testbed.engine.losses import LOSSES, get_loss
from testbed.engine.network import MLP, MLPSpec, init_params, init_replica_params
from testbed.engine.optim import OPTIMIZERS, clip_grad_norm, fused_step_lr, get_optimizer

__all__ = [
    "ACTIVATIONS", "BIAS_INITS", "LOSSES", "MLP", "MLPSpec", "OPTIMIZERS", "WEIGHT_INITS",
    "Backend", "clip_grad_norm", "fused_step_lr", "get_activation", "get_loss", "get_optimizer",
    "init_bias", "init_params", "init_replica_params", "init_weight", "namespace", "to_numpy",
]
