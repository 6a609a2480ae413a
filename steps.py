"""One training step: the plain autograd step for every model, and a faster equivalent for the
common case, a stack of Linear layers with ReLUs between them (fc1) trained with the fused Adam.

Both compute what the original computed: the mean cross-entropy of the batch, its gradients,
one update that leaves the pruned weights at zero. The fast step calls the
same kernels autograd and `torch.optim.Adam(fused=True)` call, in the same order, without the
per-step bookkeeping around them (the autograd graph, the optimiser's state lookups, grad
allocation), which at batch 60 costs about as much as the arithmetic. `tests/test_steps.py`
holds the fast step to the plain one: same losses, same weights, same masks.
"""

from typing import Protocol

import torch
from torch import nn

from archs.models.fc1 import FC1
from pruning import freeze_pruned, prunable_weights


class Step(Protocol):
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Train on one batch; return its mean loss (a detached device tensor)."""

    def finish(self) -> None:
        """End of an epoch: leave the optimiser's state complete."""


MEAN_REDUCTION = 1  # aten's code for reduction="mean"
NO_IGNORED_INDEX = -100  # nn.CrossEntropyLoss's default ignore_index


def training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    masks: list[torch.Tensor],
) -> Step:
    """The fastest step that trains `model` as the plain one does (see `Step`)."""
    weights = prunable_weights(model)
    by_weight = {id(w): mask for w, mask in zip(weights, masks, strict=True)}
    adam = FusedAdam.for_optimizer(optimizer, model, by_weight)
    layers = linear_relu_stack(model)
    if adam is not None and layers is not None and is_plain_cross_entropy(criterion):
        return LinearReluStep(layers, adam)
    return AutogradStep(model, optimizer if adam is None else adam, criterion, masks)


class AutogradStep:
    """The plain step: forward, backward, zero pruned gradients, update. With FusedAdam, the
    update itself keeps pruned weights frozen."""

    def __init__(self, model, optimizer, criterion, masks) -> None:
        self.model, self.optimizer, self.criterion, self.masks = model, optimizer, criterion, masks
        self.weights = prunable_weights(model)
        self.freezes = not isinstance(optimizer, FusedAdam)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(x), y)
        loss.backward()
        if self.freezes:
            freeze_pruned(self.weights, self.masks)
        self.optimizer.step()
        return loss.detach()

    def finish(self) -> None:
        """End of an epoch: leave the optimiser's state complete."""
        if isinstance(self.optimizer, FusedAdam):
            self.optimizer.finish()


class FusedAdam:
    """`torch.optim.Adam(fused=True).step()` as one prepared kernel call, which also freezes
    the pruned weights.

    Moments and step counts live in the optimiser's own `state`, created exactly as the
    optimiser creates them; lr, betas, eps and weight decay are read from the param group at
    every step. Only for the configuration the runner builds: one param group holding every
    parameter of the model, L2 weight decay, no amsgrad, no maximize.

    Freezing: a weight with nothing pruned needs nothing. A weight with most of it alive has the
    gradients of its pruned entries zeroed, which keeps them at zero through Adam (zero
    gradient, zero moments, zero weight decay). A weight with less than `COMPACT_BELOW` of it
    alive is updated through its survivors alone: their values and moments are kept as short
    vectors (`take`n once per epoch), the kernel runs on those, and the new values are `put`
    back into the weight. Adam treats every entry on its own, so this is the same update at a
    fraction of the memory traffic; the pruned entries are never touched. `finish()` writes
    the moments back into the optimiser's state at the end of an epoch.
    """

    COMPACT_BELOW = 0.25  # measured: below about this share alive, the compact update is faster

    def __init__(
        self,
        optimizer: torch.optim.Adam,
        params: list[nn.Parameter],
        masks: dict[int, torch.Tensor],
    ) -> None:
        self.group = optimizer.param_groups[0]
        self.params = params
        for p in params:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.exp_avgs = [optimizer.state[p]["exp_avg"] for p in params]
        self.exp_avg_sqs = [optimizer.state[p]["exp_avg_sq"] for p in params]
        self.steps = [optimizer.state[p]["step"] for p in params]
        # What the kernel runs on: the parameters and their moments, or the survivors' vectors.
        self.targets = list(params)
        self.target_exp_avgs, self.target_exp_avg_sqs = list(self.exp_avgs), list(self.exp_avg_sqs)
        self.masked: list[tuple[int, torch.Tensor]] = []  # (position, mask) to zero gradients
        self.compact: list[tuple[int, torch.Tensor]] = []  # (position, survivors' flat indices)
        with torch.no_grad():
            for i, p in enumerate(params):
                mask = masks.get(id(p))
                if mask is None:
                    continue
                alive = int(mask.count_nonzero())  # one read per weight per epoch, none per step
                if alive == mask.numel():
                    continue
                if alive >= self.COMPACT_BELOW * mask.numel() or not p.is_contiguous():
                    self.masked.append((i, mask))
                    continue
                survivors = mask.reshape(-1).nonzero().squeeze(1)
                self.compact.append((i, survivors))
                self.targets[i] = p.take(survivors)
                self.target_exp_avgs[i] = self.exp_avgs[i].take(survivors)
                self.target_exp_avg_sqs[i] = self.exp_avg_sqs[i].take(survivors)

    @classmethod
    def for_optimizer(
        cls,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        masks: dict[int, torch.Tensor] | None = None,
    ):
        """A FusedAdam for `optimizer`, freezing by `masks` (parameter id -> mask), or None
        where the optimiser is not exactly that configuration."""
        params = list(model.parameters())
        if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        flags = ("amsgrad", "maximize", "differentiable", "capturable", "decoupled_weight_decay")
        plain = not any(group.get(flag) for flag in flags)
        same_params = len(group["params"]) == len(params) and all(
            a is b for a, b in zip(group["params"], params, strict=True)
        )
        if not (group.get("fused") and plain and same_params):
            return None
        if any(p.dtype != torch.float32 or p.is_complex() for p in params):
            return None
        return cls(optimizer, params, masks or {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor] | None = None) -> None:
        """One Adam update with `grads` (default: each parameter's `.grad`), pruned weights
        frozen. The gradients of partly pruned weights are zeroed in place where pruned."""
        grads = [p.grad for p in self.params] if grads is None else list(grads)
        masked = [(grads[i], mask) for i, mask in self.masked if grads[i] is not None]
        if masked:
            torch._foreach_mul_([g for g, _ in masked], [mask for _, mask in masked])
        for i, survivors in self.compact:
            if grads[i] is not None:
                grads[i] = grads[i].take(survivors)
        targets, exp_avgs, exp_avg_sqs, steps = (
            self.targets,
            self.target_exp_avgs,
            self.target_exp_avg_sqs,
            self.steps,
        )
        if any(g is None for g in grads):  # as the optimiser does: skip those parameters
            kept = [i for i, g in enumerate(grads) if g is not None]
            targets, grads, exp_avgs, exp_avg_sqs, steps = (
                [values[i] for i in kept]
                for values in (targets, grads, exp_avgs, exp_avg_sqs, steps)
            )
        group = self.group
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            targets,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
        )
        for i, survivors in self.compact:
            self.params[i].put_(survivors, self.targets[i])

    @torch.no_grad()
    def finish(self) -> None:
        """Write the survivors' moments back into the optimiser's state (end of an epoch)."""
        for i, survivors in self.compact:
            self.exp_avgs[i].put_(survivors, self.target_exp_avgs[i])
            self.exp_avg_sqs[i].put_(survivors, self.target_exp_avg_sqs[i])


def linear_relu_stack(model: nn.Module) -> list[nn.Linear] | None:
    """fc1's Linear layers, in order, when its forward is exactly Flatten, then Linear layers
    with a ReLU between each two and no hook anywhere (`--dropout` adds hooks); else None."""
    if type(model) is not FC1 or not model.training:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    kinds = [type(m) for m in model.classifier]
    linears = [m for m in model.classifier if type(m) is nn.Linear]
    expected = [nn.Flatten] + [nn.Linear, nn.ReLU] * (len(linears) - 1) + [nn.Linear]
    if kinds != expected or model.classifier[0].start_dim != 1:
        return None
    return linears


def is_plain_cross_entropy(criterion: nn.Module) -> bool:
    """nn.CrossEntropyLoss with its defaults: mean over the batch, no weights, no smoothing."""
    return (
        type(criterion) is nn.CrossEntropyLoss
        and criterion.weight is None
        and criterion.reduction == "mean"
        and criterion.ignore_index == NO_IGNORED_INDEX
        and criterion.label_smoothing == 0.0
    )


class LinearReluStep:
    """fc1's training step written out: the forward pass, then the backward pass by hand.

    Per layer, z = h @ W.T + b and h' = relu(z); the loss is log-softmax then mean negative
    log-likelihood. Backward uses the kernels autograd would: the loss gradient through
    nll_loss_backward and _log_softmax_backward_data, dW = dz.T @ h, db = dz summed over the
    batch, dh = dz @ W, and ReLU's threshold_backward. Gradients go into buffers kept for the
    epoch instead of new `.grad` tensors; FusedAdam's update keeps the pruned weights frozen.
    """

    def __init__(self, layers: list[nn.Linear], adam: FusedAdam):
        self.layers, self.adam = layers, adam
        params = adam.params
        if len(params) != sum(1 + (layer.bias is not None) for layer in layers):
            raise ValueError("the optimiser does not hold exactly the stack's parameters")
        self.weight_grads = [torch.zeros_like(layer.weight) for layer in layers]
        self.bias_grads = [
            None if layer.bias is None else torch.zeros_like(layer.bias) for layer in layers
        ]
        by_param = {id(layer.weight): g for layer, g in zip(layers, self.weight_grads, strict=True)}
        by_param |= {
            id(layer.bias): g
            for layer, g in zip(layers, self.bias_grads, strict=True)
            if layer.bias is not None
        }
        self.grads = [by_param[id(p)] for p in params]  # in the optimiser's order
        self.one = torch.ones((), device=layers[0].weight.device)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        h = x.flatten(1)
        inputs = []  # each layer's input, kept for the backward pass
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            if layer.bias is None:
                h = torch.mm(h, layer.weight.t())
            else:
                h = torch.addmm(layer.bias, h, layer.weight.t())
            if i < last:
                h = h.relu_()
        log_probs = torch.log_softmax(h, 1)
        loss, total_weight = torch.ops.aten.nll_loss_forward(
            log_probs, y, None, MEAN_REDUCTION, NO_IGNORED_INDEX
        )
        grad = torch.ops.aten.nll_loss_backward(
            self.one, log_probs, y, None, MEAN_REDUCTION, NO_IGNORED_INDEX, total_weight
        )
        grad = torch.ops.aten._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype)
        for i in range(last, -1, -1):
            layer = self.layers[i]
            torch.mm(grad.t(), inputs[i], out=self.weight_grads[i])
            if layer.bias is not None:
                torch.sum(grad, 0, out=self.bias_grads[i])
            if i > 0:
                grad = torch.ops.aten.threshold_backward(grad.mm(layer.weight), inputs[i], 0)
        self.adam.step(self.grads)
        return loss

    def finish(self) -> None:
        """End of an epoch: leave the optimiser's state complete."""
        self.adam.finish()
