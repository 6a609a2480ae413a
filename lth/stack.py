"""Many trials of one network trained as one stacked model, in one process, with one optimiser.

Every parameter and buffer of k trials' modules is stacked along a new leading trial dimension
([k, *shape]). Adam and SGD with L2 weight decay update each element on its own, and the stacked
loss is the sum of the trials' mean losses, so each trial gets the gradient it would have alone.

Forward paths (`path="auto"` picks `module` for one trial, else `bmm` where it applies, else
`vmap` on an accelerator and `loop` on the CPU): `module`, one trial's own module; `bmm`, a
chain of Linear layers and ReLUs as one batched matrix product per layer; `vmap`,
`functional_call` under `torch.func.vmap` (BatchNorm statistics and dropout draws per trial);
`loop`, `functional_call` of each trial in turn (on the CPU faster than vmap's convolutions).
Trials start from modules each initialised itself: nothing here initialises a stacked tensor,
whose fan-in and fan-out would be wrong.
"""

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.func import functional_call, stack_module_state, vmap

from lth.pruning import Mask, prunable

PATHS = ("auto", "module", "bmm", "vmap", "loop")
_PLAIN_LAYERS = {nn.ReLU: ("relu",), nn.Identity: ("identity",), nn.Flatten: ("flatten",)}
StackedMasks = dict[str, torch.Tensor]  # parameter name -> [k, *shape] ones and zeros


class StackedModel(nn.Module):
    """k trials of one architecture as one module: parameters and buffers [k, *shape].

    `parameters()` are the stacked parameters in the original module's order, so the project's
    optimisers apply as they are; `params` and `buffers_by_name` hold them by the original names.
    """

    def __init__(self, modules: Sequence[nn.Module], path: str = "auto") -> None:
        super().__init__()
        if not modules:
            raise ValueError("a stack needs at least one trial's module")
        if path not in PATHS:
            raise ValueError(f"path {path!r} is not one of {PATHS}")
        _check_same_architecture(modules)
        self.trials = len(modules)
        if path == "module" and self.trials != 1:
            raise ValueError("path 'module' takes one trial")
        chain = linear_chain(modules[0])
        if path == "bmm" and chain is None:
            raise ValueError("path 'bmm' needs a network that is a chain of Linear and ReLU")
        if path == "auto":
            on_cpu = next(modules[0].parameters()).device.type == "cpu"
            path = "module" if self.trials == 1 else "bmm" if chain is not None else "vmap"
            path = "loop" if path == "vmap" and on_cpu else path
        self.path = path
        self.chain = chain if path == "bmm" else None
        if path == "module":  # one trial: its own module, trained in place
            self.net = modules[0]
            return
        # The network itself, its tensors replaced by the stacked ones: it keeps the modules,
        # their hooks (--dropout's) and train/eval mode for functional_call.
        self.net = copy.deepcopy(modules[0])
        persistent = set(modules[0].state_dict())
        params, buffers = stack_module_state(list(modules))
        for name, value in params.items():
            owner, leaf = _owner(self.net, name)
            trainable = modules[0].get_parameter(name).requires_grad
            owner.register_parameter(leaf, nn.Parameter(value.detach(), requires_grad=trainable))
        for name, value in buffers.items():
            owner, leaf = _owner(self.net, name)
            owner.register_buffer(leaf, value.detach().clone(), persistent=name in persistent)

    def stacked(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` of the net with its leading trial dimension (a view on the `module` path)."""
        return tensor.unsqueeze(0) if self.path == "module" else tensor

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """Original name -> stacked parameter [k, *shape] (a view on the `module` path)."""
        return {name: self.stacked(p) for name, p in self.net.named_parameters()}

    @property
    def buffers_by_name(self) -> dict[str, torch.Tensor]:
        """Original name -> stacked buffer [k, *shape] (BatchNorm's running statistics)."""
        return {name: self.stacked(b) for name, b in self.net.named_buffers()}

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits [k, B, classes] of the trials' batches x [k, B, ...], or with `shared` of one
        batch x [B, ...] that every trial sees."""
        if self.path == "module":
            return self.net(x if shared else x[0]).unsqueeze(0)
        if self.chain is not None:
            return self._chain_forward(x, shared)
        state = {**self.params, **self.buffers_by_name}
        if self.path == "loop":
            logits = []
            for i in range(self.trials):
                trial = {name: v[i] for name, v in state.items()}
                logits.append(_call(self.net, trial, x if shared else x[i]))
            return torch.stack(logits)
        batched = vmap(_call, in_dims=(None, 0, None if shared else 0), randomness="different")
        return batched(self.net, state, x)

    def _chain_forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """The Linear chain with features first, h' = W h + b on h [k, features, B], so that
        the weight's gradient comes out of the batched product in the weight's own layout."""
        assert self.chain is not None
        params = self.params
        h = x.expand(self.trials, *x.shape) if shared else x
        features_first = False
        for op, *names in self.chain:
            if op == "flatten":
                h = h.flatten(2) if not features_first else h
            elif op == "relu":
                h = torch.relu(h)
            elif op == "linear":
                if not features_first:  # [k, ..., in] -> [k, in, rows]
                    h = h.reshape(self.trials, -1, h.shape[-1]).transpose(1, 2)
                    features_first = True
                weight, bias = params[names[0]], params.get(names[1])
                if bias is None:
                    h = torch.bmm(weight, h)
                else:
                    h = torch.baddbmm(bias.unsqueeze(2), weight, h)
        return h.transpose(1, 2)

    def trial_state(self, i: int) -> dict[str, torch.Tensor]:
        """A copy of trial i's state_dict, with the original module's names and shapes."""
        state = self.net.state_dict()
        return {name: self.stacked(value)[i].clone() for name, value in state.items()}

    @torch.no_grad()
    def load_trial(self, i: int, state: Mapping[str, torch.Tensor]) -> None:
        """Write one trial's state_dict (the original module's names and shapes) into its slice."""
        own = self.net.state_dict()
        if set(state) != set(own):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise KeyError(f"trial state: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            self.stacked(own[name])[i].copy_(value)


def _call(net: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
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
    if len(list(first.named_parameters(remove_duplicate=False))) != len(list(first.parameters())):
        raise ValueError("networks with shared (tied) parameters cannot be stacked yet")


def linear_chain(module: nn.Module) -> list[tuple[str, ...]] | None:
    """The module's forward as a list of ("flatten",), ("relu",), ("identity",) and ("linear",
    weight name, bias name or "") when it is exactly such a chain with at least one Linear; None
    for any other network, one torch.fx cannot trace, or one with forward hooks (--dropout's)."""
    if any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
        return None
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # control flow fx cannot follow: not a plain chain
        return None
    nodes = list(graph.nodes)
    if not nodes or nodes[0].op != "placeholder":
        return None
    ops: list[tuple[str, ...]] = []
    for previous, node in zip(nodes, nodes[1:], strict=False):
        if not node.args or node.args[0] is not previous or len(previous.users) != 1:
            return None
        if node.op == "output":
            return ops if any(op[0] == "linear" for op in ops) else None
        op = _chain_op(module, node)
        if op is None:
            return None
        ops.append(op)
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
        if type(layer) is nn.Flatten and (layer.start_dim, layer.end_dim) != (1, -1):
            return None
        return _PLAIN_LAYERS.get(type(layer))
    if node.op == "call_function":
        if node.target in (torch.relu, nn.functional.relu) and not rest and not kwargs:
            return ("relu",)
        if node.target is torch.flatten:
            start = rest[0] if rest else kwargs.pop("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.pop("end_dim", -1)
            if start == 1 and end == -1 and not kwargs and len(rest) <= 2:
                return ("flatten",)
    return None


def stack_masks(stacked: StackedModel, masks: Sequence[Mask]) -> StackedMasks:
    """The trials' masks (name -> numpy array, one per trial) as name -> [k, *shape] tensors."""
    if len(masks) != stacked.trials:
        raise ValueError(f"{len(masks)} masks for {stacked.trials} trials")
    weights = prunable(stacked.net)
    return {
        name: torch.from_numpy(np.stack([mask[name] for mask in masks])).to(p.device, p.dtype)
        for name, p in weights.items()
    }


def gradient_masks(stacked: StackedModel, masks: StackedMasks) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, mask of its gradient's shape) for every masked weight: the pairs
    `freeze_pruned_trials` multiplies."""
    leaves = dict(stacked.net.named_parameters())
    return [
        (leaves[name], mask[0] if stacked.path == "module" else mask)
        for name, mask in masks.items()
    ]


def freeze_pruned_trials(pairs: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Zero the gradients of every trial's pruned weights, so that they stay exactly zero."""
    for param, mask in pairs:
        if param.grad is not None:
            param.grad.mul_(mask)
