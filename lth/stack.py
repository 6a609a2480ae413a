"""Many trials of one network trained as one stacked model, in one process, with one optimiser.

Every parameter and buffer of k trials' modules is stacked along a new leading trial dimension
([k, *shape]). Adam and SGD with L2 weight decay update each element on its own, so one
optimiser over the stacked tensors is k independent optimisers, and with each trial's batch
loss its own mean cross-entropy (the stacked loss is their sum) each trial's gradient is the
one it would have alone. What stays per trial: its generator (its data order), its mask, its
slice of every tensor.

Two forward paths, the same function within float rounding:
- `vmap`: `torch.func.functional_call` of the original module under `torch.func.vmap` over the
  trial dimension. Any network: BatchNorm updates its stacked running statistics in place in
  training (each trial from its own batch) and uses them in eval mode; dropout draws
  differently for each trial (`randomness="different"`), from the global generator.
- `bmm`: networks whose forward is a plain chain of Linear layers and ReLUs (with flattening),
  such as fc1, found by tracing the forward with torch.fx, run as one batched matrix product
  per layer (`torch.baddbmm`), which is faster than vmap's per-call overhead on small layers.
`path="auto"` picks `bmm` wherever it applies.

Trials start from modules each trial initialised itself (from its own generator) and that are
copied into their slices: nothing here initialises a stacked tensor, whose fan-in and fan-out
would be wrong.
"""

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.func import functional_call, stack_module_state, vmap

from lth.data import Split
from lth.pruning import Mask, freeze_pruned, prunable
from lth.train import EVAL_BATCH

PATHS = ("auto", "bmm", "vmap")
StackedMasks = dict[str, torch.Tensor]  # parameter name -> [k, *shape] ones and zeros


class StackedModel(nn.Module):
    """k trials of one architecture as one module: parameters [k, *shape], buffers likewise.

    `forward(x)`: x of shape [k, B, ...] (each trial its own batch) or [B, ...] (one batch
    shared by every trial) gives logits [k, B, classes]. `parameters()` are the stacked
    parameters, in the original module's order, so the project's optimisers apply as they are
    (`train.build_optimizer(args, stacked)`). `params` and `buffers_by_name` hold them by the
    original module's names.
    """

    def __init__(self, modules: Sequence[nn.Module], path: str = "auto") -> None:
        super().__init__()
        if not modules:
            raise ValueError("a stack needs at least one trial's module")
        if path not in PATHS:
            raise ValueError(f"path {path!r} is not one of {PATHS}")
        _check_same_architecture(modules)
        self.trials = len(modules)
        persistent = set(modules[0].state_dict())
        params, buffers = stack_module_state(list(modules))
        # The network itself, its tensors replaced by the stacked ones: it keeps the modules,
        # their hooks (--dropout's) and train/eval mode for functional_call.
        self.net = copy.deepcopy(modules[0])
        for name, value in params.items():
            owner, leaf = _owner(self.net, name)
            trainable = modules[0].get_parameter(name).requires_grad
            owner.register_parameter(leaf, nn.Parameter(value.detach(), requires_grad=trainable))
        for name, value in buffers.items():
            owner, leaf = _owner(self.net, name)
            owner.register_buffer(leaf, value.detach().clone(), persistent=name in persistent)
        chain = linear_chain(modules[0])
        if path == "bmm" and chain is None:
            raise ValueError("path 'bmm' needs a network that is a chain of Linear and ReLU")
        self.chain = chain if path != "vmap" else None
        self.path = "bmm" if self.chain is not None else "vmap"

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """Original name -> stacked parameter [k, *shape]."""
        return dict(self.net.named_parameters())

    @property
    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        """Original name -> stacked buffer [k, *shape] (BatchNorm's running statistics)."""
        return dict(self.net.named_buffers())

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits [k, B, classes] of the trials' own batches x [k, B, ...], or with `shared`
        of one batch x [B, ...] that every trial sees (evaluation)."""
        if self.chain is not None:
            return self._chain_forward(x, shared)
        state = {**self.params, **self.buffers_by_name}
        batched = vmap(_call, in_dims=(None, 0, None if shared else 0), randomness="different")
        return batched(self.net, state, x)

    def _chain_forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        assert self.chain is not None
        params = self.params
        h = x.expand(self.trials, *x.shape) if shared else x
        for op, *names in self.chain:
            if op == "flatten":
                h = h.flatten(2)
            elif op == "relu":
                h = torch.relu(h)
            elif op == "linear":  # linear: [k, ..., in] @ [k, in, out] + [k, 1, out]
                weight, bias = params[names[0]], params.get(names[1])
                lead = h.shape[:-1]
                rows = h.reshape(self.trials, -1, h.shape[-1])
                if bias is None:
                    out = torch.bmm(rows, weight.transpose(1, 2))
                else:
                    out = torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
                h = out.view(*lead, weight.shape[1])
        return h

    # --- one trial's state ---------------------------------------------------------------

    def trial_state(self, i: int) -> dict[str, torch.Tensor]:
        """Trial i's state_dict with the original module's names and shapes (a copy, loadable
        into the module the trial was made from)."""
        return {name: value[i].clone() for name, value in self.net.state_dict().items()}

    def unstack(self) -> list[dict[str, torch.Tensor]]:
        """Every trial's state_dict, in trial order."""
        return [self.trial_state(i) for i in range(self.trials)]

    @torch.no_grad()
    def load_trial(self, i: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write one trial's state_dict (the original module's names and shapes) into its slice:
        rewinding or re-initialising one trial leaves the others as they are."""
        own = self.net.state_dict()
        if set(state) != set(own):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"trial state: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            own[name][i].copy_(value)


def _call(net: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One trial's forward: the network with one slice of every stacked tensor."""
    return functional_call(net, state, (x,))


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return root.get_submodule(prefix), leaf


def _check_same_architecture(modules: Sequence[nn.Module]) -> None:
    first = modules[0]
    shapes = {name: tuple(v.shape) for name, v in first.state_dict().items()}
    for i, module in enumerate(modules[1:], start=1):
        if type(module) is not type(first):
            raise ValueError(f"trial {i} is a {type(module).__name__}, trial 0 a {type(first)}")
        other = {name: tuple(v.shape) for name, v in module.state_dict().items()}
        if other != shapes:
            raise ValueError(f"trial {i}'s state names or shapes differ from trial 0's")
    names = [name for name, _ in first.named_parameters(remove_duplicate=False)]
    if len(names) != len(dict(first.named_parameters())):
        raise ValueError("networks with shared (tied) parameters cannot be stacked yet")


# --- the batched-matmul path: which networks are a chain of Linear and ReLU -----------------


def linear_chain(module: nn.Module) -> list[tuple[str, ...]] | None:
    """The module's forward as a list of ("flatten",), ("relu",), ("identity",) and ("linear",
    weight name, bias name or ""), when it is exactly such a chain (each step's one input the previous
    step's output, at least one Linear); None for any other network, one torch.fx cannot
    trace, or one with forward hooks (such as --dropout's), which the chain would skip."""
    if any(_has_hooks(m) for m in module.modules()):
        return None
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # control flow fx cannot follow: not a plain chain
        return None
    ops: list[tuple[str, ...]] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                return None
            previous = node
            continue
        if previous is None or not node.args or node.args[0] is not previous:
            return None
        if len(previous.users) != 1:
            return None
        if node.op == "output":
            return ops if any(op[0] == "linear" for op in ops) else None
        op = _chain_op(module, node)
        if op is None:
            return None
        ops.append(op)
        previous = node
    return None


def _chain_op(module: nn.Module, node: fx.Node) -> tuple[str, ...] | None:
    rest, kwargs = node.args[1:], dict(node.kwargs)
    kwargs.pop("inplace", None)
    if node.op == "call_module":
        layer = module.get_submodule(str(node.target))
        if rest or kwargs:
            return None
        if type(layer) is nn.Linear:
            bias = f"{node.target}.bias" if layer.bias is not None else ""
            return ("linear", f"{node.target}.weight", bias)
        if type(layer) is nn.ReLU:
            return ("relu",)
        if type(layer) is nn.Identity:
            return ("identity",)
        if type(layer) is nn.Flatten and (layer.start_dim, layer.end_dim) == (1, -1):
            return ("flatten",)
        return None
    if node.op == "call_function":
        if node.target in (torch.relu, nn.functional.relu) and not rest and not kwargs:
            return ("relu",)
        if node.target is torch.flatten:
            start = rest[0] if rest else kwargs.pop("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.pop("end_dim", -1)
            if start == 1 and end == -1 and not kwargs and len(rest) <= 2:
                return ("flatten",)
    return None


def _has_hooks(module: nn.Module) -> bool:
    """Whether the module has forward hooks of its own (nn.Module lists them in these dicts,
    with no public accessor)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


# --- masks per trial -------------------------------------------------------------------------


def stack_masks(stacked: StackedModel, masks: Sequence[Mask]) -> StackedMasks:
    """The trials' masks (pruning's name -> numpy array, one mask per trial) as name ->
    [k, *shape] tensors beside the stacked weights (built once per level)."""
    if len(masks) != stacked.trials:
        raise ValueError(f"{len(masks)} masks for {stacked.trials} trials")
    weights = prunable(stacked.net)
    return {
        name: torch.from_numpy(np.stack([mask[name] for mask in masks])).to(p.device, p.dtype)
        for name, p in weights.items()
    }


@torch.no_grad()
def apply_masks(stacked: StackedModel, masks: StackedMasks) -> None:
    """Zero every trial's pruned weights in place."""
    params = stacked.params
    for name, mask in masks.items():
        params[name].mul_(mask)


def freeze_pruned_trials(stacked: StackedModel, masks: StackedMasks) -> None:
    """Zero the gradients of every trial's pruned weights (`pruning.freeze_pruned` on the
    stacked tensors), so that they stay exactly zero under Adam or SGD with weight decay."""
    params = stacked.params
    freeze_pruned([params[name] for name in masks], list(masks.values()))


# --- training and evaluation ------------------------------------------------------------------


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of every trial's every sample, [k, B], of logits [k, B, C] and labels
    [k, B] (each trial's own) or [B] (shared)."""
    k, b = logits.shape[:2]
    if labels.dim() == 1:
        labels = labels.expand(k, b)
    losses = nn.functional.cross_entropy(
        logits.reshape(k * b, -1), labels.reshape(k * b), reduction="none"
    )
    return losses.view(k, b)


def trial_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trial's mean cross-entropy over its batch, [k] (`sample_losses`)."""
    return sample_losses(logits, labels).mean(dim=1)


def trial_orders(count: int, generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """[k, count]: each trial's permutation of the training set, drawn from its own generator
    (on the generator's device, as `torch.randperm` needs), on `device`."""
    orders = [torch.randperm(count, generator=g, device=g.device) for g in generators]
    return torch.stack(orders).to(device)


def trial_batch(data: Split, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The trials' own batches: index [k, B] -> normalised images [k, B, ...], labels [k, B],
    gathered in one `Split.batch` call."""
    k, b = index.shape
    images, labels = data.batch(index.reshape(-1))
    return images.view(k, b, *images.shape[1:]), labels.view(k, b)


def train_step(
    stacked: StackedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    masks: StackedMasks,
) -> torch.Tensor:
    """One optimiser step of every trial on its own batch; returns the trials' batch losses
    [k] (detached, on the device: nothing is read back)."""
    optimizer.zero_grad(set_to_none=True)
    losses = trial_losses(stacked(images, shared=False), labels)
    losses.sum().backward()  # each trial's gradient is that of its own mean loss
    freeze_pruned_trials(stacked, masks)
    optimizer.step()
    return losses.detach()


def train_epoch(
    stacked: StackedModel,
    data: Split,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    masks: StackedMasks,
    generators: Sequence[torch.Generator],
    *,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[float]:
    """One pass of every trial over its own fresh permutation of `data` (drawn from its
    generator); returns each trial's mean training loss.

    As `train.train_epoch` for one model: the last, smaller batch is trained too, the losses
    are summed on the device and read once, at the end. `schedule`, if any, is stepped after
    every optimiser step (one rate for all trials).
    """
    if len(generators) != stacked.trials:
        raise ValueError(f"{len(generators)} generators for {stacked.trials} trials")
    stacked.train()
    device = data.labels.device
    count = len(data)
    orders = trial_orders(count, generators, device)
    total = torch.zeros(stacked.trials, device=device)
    for start in range(0, count, batch_size):
        images, labels = trial_batch(data, orders[:, start : start + batch_size])
        losses = train_step(stacked, images, labels, optimizer, masks)
        if schedule is not None:
            schedule.step()
        total += losses * labels.shape[1]
    return [t / count for t in total.tolist()]


@torch.no_grad()
def loss_and_accuracy(
    stacked: StackedModel, data: Split, batch_size: int = EVAL_BATCH
) -> tuple[list[float], list[float]]:
    """Each trial's mean cross-entropy loss and accuracy in percent over the whole split, in
    eval mode (BatchNorm's running statistics), every batch shared by the trials."""
    stacked.eval()
    device = data.labels.device
    loss = torch.zeros(stacked.trials, device=device)
    correct = torch.zeros(stacked.trials, dtype=torch.int64, device=device)
    for start in range(0, len(data), batch_size):
        images, labels = data.between(start, start + batch_size)
        logits = stacked(images, shared=True)
        loss += sample_losses(logits, labels).sum(dim=1)
        correct += (logits.argmax(dim=2) == labels).sum(dim=1)
    count = len(data)
    return [v / count for v in loss.tolist()], [100.0 * c / count for c in correct.tolist()]


def evaluate(stacked: StackedModel, data: Split, batch_size: int = EVAL_BATCH) -> list[float]:
    """Each trial's test accuracy in percent (`train.evaluate` per trial)."""
    return loss_and_accuracy(stacked, data, batch_size)[1]
