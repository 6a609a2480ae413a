"""`--pretrain zae`: layer-wise autoencoder pre-training of fclin's hidden layers.

As in Lin, Memisevic & Konda (2016): each hidden layer in turn is trained by SGD with momentum
as a tied autoencoder (a visible bias thrown away after) of the previous layers' output: a
zero-bias autoencoder with the code z * (z > 1) where a ReLU follows, else a linear one with
weight decay; the cost is the squared reconstruction error summed over units, batch-averaged.
Unlike theirs: fixed epochs and rate, no dropout, the output layer left at its initialisation.
The pre-trained network is the run's initial state.
"""

import math

import torch
from torch import Tensor, nn

from lth.errors import UserError

ZAE_THRESHOLD = 1.0
ZAE_LR = 1e-3
LINEAR_LR = 1e-4
LINEAR_WEIGHT_DECAY = 1e-3
MOMENTUM = 0.9
FEATURE_CHUNK = 1000


def hidden_stages(model: nn.Module) -> list[tuple[nn.Linear, nn.Sequential]]:
    """Each hidden Linear layer of `model.body` with the parameter-free modules that follow it."""
    stages: list[tuple[nn.Linear, list[nn.Module]]] = []
    for module in model.body:
        if isinstance(module, nn.Linear):
            stages.append((module, []))
        else:
            stages[-1][1].append(module)
    return [(linear, nn.Sequential(*after)) for linear, after in stages]


def pretrain_zae(
    model: nn.Module, train_images: Tensor, *, epochs: int, batch_size: int
) -> list[list[float]]:
    """Pre-train every hidden layer of a fitted fclin in turn; returns each layer's epoch costs."""
    was_training = model.training
    model.eval()  # no dropout hooks while computing the features
    features = _in_chunks(model.whiten, train_images)
    history = []
    for index, (linear, after) in enumerate(hidden_stages(model)):
        zero_bias = any(isinstance(m, nn.ReLU) for m in after)
        costs = train_autoencoder(linear.weight, features, zero_bias, epochs, batch_size)
        if not all(math.isfinite(cost) for cost in costs):
            raise UserError(
                f"--pretrain zae diverged at hidden layer {index}; try a smaller --batch_size"
            )
        history.append(costs)
        features = _in_chunks(lambda x, f=linear, a=after: a(f(x)), features)
    model.train(was_training)
    return history


def train_autoencoder(
    weight: nn.Parameter, data: Tensor, zero_bias: bool, epochs: int, batch_size: int
) -> list[float]:
    """Train `weight` (out x in) as a tied autoencoder of `data` (N x in); mean cost per epoch."""
    visible_bias = torch.zeros(weight.shape[1], device=weight.device, requires_grad=True)
    optimizer = torch.optim.SGD(
        [
            {"params": [weight], "weight_decay": 0.0 if zero_bias else LINEAR_WEIGHT_DECAY},
            {"params": [visible_bias], "weight_decay": 0.0},
        ],
        lr=ZAE_LR if zero_bias else LINEAR_LR,
        momentum=MOMENTUM,
    )
    costs = []
    count = data.shape[0]
    for _ in range(epochs):
        total = torch.zeros((), device=weight.device)
        for batch in torch.randperm(count, device=data.device).split(batch_size):
            x = data[batch].to(weight.device)
            code = x @ weight.T
            if zero_bias:
                code = code * (code > ZAE_THRESHOLD)
            cost = (code @ weight + visible_bias - x).pow(2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            cost.backward()
            optimizer.step()
            total += cost.detach() * x.shape[0]
        costs.append(total.item() / count)
    weight.grad = None
    return costs


@torch.no_grad()
def _in_chunks(function, data: Tensor) -> Tensor:
    return torch.cat(
        [function(data[i : i + FEATURE_CHUNK]) for i in range(0, len(data), FEATURE_CHUNK)]
    )
