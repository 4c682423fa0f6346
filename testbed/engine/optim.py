"""Optimisers: one ``update`` rule each, matching ``torch.optim``'s
single-tensor update order so that trajectories agree to rounding.

An optimiser updates a ``params`` dict in place from a ``grads`` dict with the
same keys, and keeps its per-parameter ``state`` (plain arrays, easy to
checkpoint). ``lr`` may be a float, or an array of shape (K,) giving each of
K stacked replicas (parameters of shape (K, ...)) its own learning rate.

``step`` is two parts: ``step_scalars(t)``, the numbers that change from step
to step (Adam's bias corrections at step t, Adagrad's decayed learning rate),
computed once per step in python; and ``apply``, the arithmetic on the arrays.
The split is for ``testbed.engine.cuda_graph``: a CUDA graph replays the
arithmetic with the numbers it saw when it was captured, so it gets each step's
numbers from ``step_scalars`` in device tensors instead.
"""

from __future__ import annotations

import math

from testbed.engine.backend import namespace


class Optimizer:
    name = "optimizer"

    def __init__(self, lr: float):
        self.lr = lr
        self.state: dict[str, dict] = {}
        self.steps = 0

    def step(self, params: dict, grads: dict) -> None:
        """Apply one update to every parameter, in place."""
        self.steps += 1
        self.apply(params, grads, self.step_scalars(self.steps))

    def step_scalars(self, t: int) -> dict:
        """The numbers of update t (t = 1, 2, ...) that depend on t; none for most optimisers."""
        return {}

    def apply(self, params: dict, grads: dict, scalars: dict) -> None:
        """The update of every parameter, in place, with this step's ``step_scalars``."""
        for key, param in params.items():
            self.update(param, grads[key], self.state.setdefault(key, {}), self.lr_for(param), scalars)

    def lr_for(self, param, lr=None):
        """The learning rate (or ``lr``, a number derived from it) shaped to broadcast against
        ``param``: a float as it is, an array of K per-replica values as (K, 1, ...)."""
        lr = self.lr if lr is None else lr
        if isinstance(lr, int | float):
            return lr
        return lr.reshape(lr.shape + (1,) * (param.ndim - lr.ndim))

    def update(self, param, grad, state: dict, lr, scalars: dict) -> None:
        raise NotImplementedError

    def fused_lr(self):
        """The learning rate (a number, or K replicas' rates) when this update can be fused into
        backward (``MLP.sgd_step``, then ``count_step``): plain SGD. None for every other update."""
        return None

    def count_step(self) -> None:
        """Count an update applied by ``MLP.sgd_step`` (``step`` counts its own)."""
        self.steps += 1


def fused_step_lr(optimizer: Optimizer, clip_norm: float | None = None, update: bool = True,
                  keep_grads: bool = False):
    """The learning rate with which a training step fuses its update into backward
    (``MLP.sgd_step``, then ``optimizer.count_step()``), or None where the step must form its
    gradients and update from them. A step fuses where it updates, no one reads its gradients
    (``keep_grads``: it records them, or they are compared with torch's), nothing is clipped
    (clipping scales every gradient by their joint norm, known only once all exist) and the update
    is plain SGD (``Optimizer.fused_lr``). The one place that decides it: the training step
    (``testbed.training.step.manual_step``) and the CUDA graph (``testbed.engine.cuda_graph``) ask
    here.
    """
    if not update or keep_grads or clip_norm is not None:
        return None
    return optimizer.fused_lr()


class SGD(Optimizer):
    """v <- mu v + (1 - dampening) g;  w <- w - lr (g + mu v if nesterov else v).

    The first step sets v = g (no dampening), as torch.optim.SGD (a branch in python: under a
    CUDA graph that first update runs eagerly, and the graph captures the steps after it).
    """

    name = "sgd"

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening = 0")
        self.momentum, self.dampening = momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def apply(self, params: dict, grads: dict, scalars: dict) -> None:
        if self.momentum or self.weight_decay:
            return super().apply(params, grads, scalars)
        # plain SGD, w <- w - lr g: every parameter in one call (one kernel launch on torch)
        params_list = list(params.values())
        lr = self.lr if isinstance(self.lr, int | float) else [self.lr_for(p) for p in params_list]
        namespace(params_list[0]).sub_scaled_all_(params_list, lr, [grads[k] for k in params])

    def fused_lr(self):
        return None if (self.momentum or self.weight_decay) else self.lr

    def update(self, param, grad, state, lr, scalars):
        if self.weight_decay:
            grad = grad + self.weight_decay * param  # L2 penalty wd/2 ||w||^2
        if self.momentum:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad * 1  # a copy
            else:
                buf = state["momentum_buffer"]
                buf *= self.momentum
                buf += (1 - self.dampening) * grad
            buf = state["momentum_buffer"]
            grad = grad + self.momentum * buf if self.nesterov else buf
        namespace(param).sub_scaled_(param, lr, grad)


class Adam(Optimizer):
    """Kingma & Ba 2014, Algorithm 1, with torch's bias-correction arrangement:
    m <- m + (1 - b1)(g - m);  v <- b2 v + (1 - b2) g^2;
    w <- w - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps).
    ``weight_decay`` adds wd w to g (L2); AdamW decays the weights instead.
    t is the optimiser's ``steps`` (every parameter is updated at every step).
    """

    name = "adam"
    decoupled_weight_decay = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def step_scalars(self, t):
        """The bias corrections of step t: the step size lr / (1 - b1^t), and sqrt(1 - b2^t)."""
        return {"step_size": self.lr / (1 - self.beta1 ** t),
                "bias_correction2_sqrt": math.sqrt(1 - self.beta2 ** t)}

    def update(self, param, grad, state, lr, scalars):
        if not state:
            state.update(exp_avg=namespace(param).zeros_like(param),
                         exp_avg_sq=namespace(param).zeros_like(param))
        if self.weight_decay:
            if self.decoupled_weight_decay:
                param *= 1 - lr * self.weight_decay  # Loshchilov & Hutter 2019
            else:
                grad = grad + self.weight_decay * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - self.beta1) * (grad - exp_avg)
        exp_avg_sq *= self.beta2
        exp_avg_sq += (1 - self.beta2) * grad * grad
        denom = namespace(param).sqrt(exp_avg_sq) / scalars["bias_correction2_sqrt"] + self.eps
        namespace(param).sub_scaled_(param, self.lr_for(param, scalars["step_size"]), exp_avg / denom)


class AdamW(Adam):
    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """Tieleman & Hinton 2012: v <- a v + (1 - a) g^2;  w <- w - lr g / (sqrt(v) + eps).
    ``centered`` divides by sqrt(v - mean(g)^2); ``momentum`` accumulates the step.
    """

    name = "rmsprop"

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum
        self.centered, self.weight_decay = centered, weight_decay

    def update(self, param, grad, state, lr, scalars):
        xp = namespace(param)
        if not state:
            state["square_avg"] = xp.zeros_like(param)
            if self.momentum:
                state["momentum_buffer"] = xp.zeros_like(param)
            if self.centered:
                state["grad_avg"] = xp.zeros_like(param)
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        square_avg = state["square_avg"]
        square_avg *= self.alpha
        square_avg += (1 - self.alpha) * grad * grad
        if self.centered:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - self.alpha) * (grad - grad_avg)
            avg = xp.sqrt(square_avg - grad_avg * grad_avg) + self.eps
        else:
            avg = xp.sqrt(square_avg) + self.eps
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += grad / avg
            xp.sub_scaled_(param, lr, buf)
        else:
            xp.sub_scaled_(param, lr, grad / avg)


class Adagrad(Optimizer):
    """Duchi et al. 2011: G <- G + g^2;  w <- w - lr_t g / (sqrt(G) + eps),
    lr_t = lr / (1 + (t - 1) lr_decay) at step t (the optimiser's ``steps``)."""

    name = "adagrad"

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, eps: float = 1e-10,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0):
        super().__init__(lr)
        self.lr_decay, self.eps, self.weight_decay = lr_decay, eps, weight_decay
        self.initial_accumulator_value = initial_accumulator_value

    def step_scalars(self, t):
        """The decayed learning rate of step t."""
        return {"clr": self.lr / (1 + (t - 1) * self.lr_decay)}

    def update(self, param, grad, state, lr, scalars):
        xp = namespace(param)
        if not state:
            state["sum"] = xp.full_like(param, self.initial_accumulator_value)
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        state["sum"] += grad * grad
        xp.sub_scaled_(param, self.lr_for(param, scalars["clr"]), grad / (xp.sqrt(state["sum"]) + self.eps))


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad)}


def get_optimizer(name: str, **hyper) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; allowed: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**hyper)


def clip_grad_norm(grads: dict, max_norm: float, replica_ndim: int = 0):
    """Scale all gradients by min(1, max_norm / (||g|| + 1e-6)), ||g|| the global
    2-norm over every parameter, as torch.nn.utils.clip_grad_norm_. With
    ``replica_ndim`` leading replica axes, each replica is clipped by its own
    norm. Returns the norm before clipping.
    """
    sum_of_squares = None
    for grad in grads.values():
        xp = namespace(grad)
        own_axes = tuple(range(replica_ndim, grad.ndim))
        squares = xp.sum(grad * grad, axis=own_axes)
        sum_of_squares = squares if sum_of_squares is None else sum_of_squares + squares
    total_norm = xp.sqrt(sum_of_squares)
    clip_coef = xp.minimum(max_norm / (total_norm + 1e-6), 1.0)
    for grad in grads.values():
        grad *= clip_coef.reshape(clip_coef.shape + (1,) * (grad.ndim - replica_ndim))
    return total_norm
