"""Losses as forward/backward pairs.

``forward(output, target)`` returns ``(loss, cache)`` with the loss averaged
as torch's ``reduction='mean'`` does; ``backward(cache)`` returns
dL/d(output). With leading replica axes (output (..., N, C)) the loss has
shape (...) and the gradient is that of their sum, i.e. each replica's own.
"""

from __future__ import annotations

from testbed.engine.backend import namespace


class MSELoss:
    """L = mean over N and D of (y_hat - y)^2."""

    name = "mse"

    def forward(self, output, target):
        diff = output - target
        count = output.shape[-1] * output.shape[-2]
        return namespace(output).sum(diff * diff, axis=(-2, -1)) / count, (diff, count)

    def backward(self, cache):
        diff, count = cache
        return diff * (2.0 / count)


class CrossEntropyLoss:
    """Softmax cross-entropy on integer labels: L = mean_n [lse(z_n) - z_n[y_n]].

    The log-sum-exp subtracts the row maximum, so logits of +-1e4 stay finite.
    """

    name = "cross_entropy"

    def forward(self, logits, labels):
        xp = namespace(logits)
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        exp_shifted = xp.exp(shifted)
        sum_exp = xp.sum(exp_shifted, axis=-1, keepdims=True)
        log_probs_of_label = xp.take_label(shifted, labels) - xp.log(sum_exp[..., 0])
        loss = -xp.mean(log_probs_of_label, axis=-1)
        return loss, (exp_shifted / sum_exp, labels)

    def backward(self, cache):
        probs, labels = cache  # dL/dz = (softmax(z) - onehot(y)) / N
        n = probs.shape[-2]
        return (probs - namespace(probs).one_hot(labels, probs.shape[-1], probs)) / n


class BCEWithLogitsLoss:
    """Binary cross-entropy on logits z and targets y in [0, 1]:
    L = mean [(1 - y) z + log(1 + exp(-z))], computed as
    (1 - y) z + max(-z, 0) + log1p(exp(-|z|)) (= (1 - y) z - log sigmoid(z), as torch):
    stable for any z, and accurate where the loss is tiny (confident, correct logits).
    """

    name = "bce_with_logits"

    def forward(self, logits, target):
        xp = namespace(logits)
        per_element = ((1 - target) * logits + xp.maximum(-logits, 0.0)
                       + xp.log1p(xp.exp(-xp.abs(logits))))
        count = logits.shape[-1] * logits.shape[-2]
        return xp.sum(per_element, axis=(-2, -1)) / count, (logits, target, count)

    def backward(self, cache):
        logits, target, count = cache  # dL/dz = (sigma(z) - y) / count
        return (namespace(logits).sigmoid(logits) - target) / count


LOSSES = {cls.name: cls for cls in (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss)}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(LOSSES)}")
    return LOSSES[name]()
