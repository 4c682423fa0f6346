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
    """Softmax cross-entropy on integer labels: L = mean_n [-log softmax(z_n)[y_n]].

    log softmax(z) = z - max(z) - log sum exp(z - max(z)) (``backend.log_softmax``):
    subtracting the row maximum keeps logits of +-1e4 finite.
    """

    name = "cross_entropy"

    def forward(self, logits, labels):
        xp = namespace(logits)
        log_probs = xp.log_softmax(logits)
        loss = -xp.mean(xp.take_label(log_probs, labels), axis=-1)
        return loss, (log_probs, labels)

    def backward(self, cache):
        log_probs, labels = cache  # dL/dz = (softmax(z) - onehot(y)) / N
        xp = namespace(log_probs)
        grad = xp.exp(log_probs)
        xp.add_at_label_(grad, labels, -1.0)  # in place: - onehot(y)
        grad /= float(log_probs.shape[-2])
        return grad


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


class LogisticSumSquaredError:
    """The PDP error measure (Rumelhart, Hinton & Williams 1986) on logits z and targets y:
    E = 1/2 sum over patterns and outputs of (y - o)^2 with o = sigma(z), the logistic output unit.

    A sum, not a mean: the papers' learning rates (eta = 0.5 on XOR) are for the gradient summed over
    the patterns of a sweep. With leading replica axes the sum is per replica.
    """

    name = "logistic_sum_squared_error"

    def forward(self, logits, target):
        xp = namespace(logits)
        out = xp.sigmoid(logits)
        diff = out - target
        return 0.5 * xp.sum(diff * diff, axis=(-2, -1)), (out, diff)

    def backward(self, cache):
        out, diff = cache  # dE/dz = (o - y) o (1 - o)
        return diff * out * (1 - out)


LOSSES = {cls.name: cls for cls in (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss)}
# Losses of the papers the presets reproduce, for the presets' own training loops: not a data set's
# task loss (``testbed.data.dataset.LOSSES`` picks one of LOSSES), so not in LOSSES.
PAPER_LOSSES = {cls.name: cls for cls in (LogisticSumSquaredError,)}


def get_loss(name: str):
    known = {**LOSSES, **PAPER_LOSSES}
    if name not in known:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(known)}")
    return known[name]()
