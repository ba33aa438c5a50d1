"""Forward hooks that expose the router logits and expert outputs of a PyTorch MoE.

``MoEInspector`` finds the MoE layers of a model, registers forward hooks on their routers
and experts, and records one forward pass at a time::

    with MoEInspector(model) as inspector:
        logits = model(videos)
        for layer in inspector.layers:
            layer.router_logits      # (N, U, M)
            layer.selected_experts   # (N, U, k)
            layer.gate_weights       # (N, U, k)
            layer.expert_outputs     # outputs of the experts that ran, with their rows

Discovery, in order:

1. Module paths given by the caller: ``routers=["blocks.0.moe.gate", ...]`` and optionally
   ``experts=["blocks.0.moe.experts", ...]`` (one container per router, or a list of paths of
   single experts).
2. Modules that follow the protocol: a ``router`` (or ``gate``) submodule that returns the
   logits, and an ``experts`` ``nn.ModuleList`` or ``nn.ModuleDict``.
3. Well-known layouts: routers named ``gating`` or ``gate_network``; DeepSpeed-style gates whose
   ``wg`` linear layer produces the logits; experts held in ``experts.deepspeed_experts``.

A router may return a tensor or a tuple such as ``(logits, aux_loss)``. From a tuple, the
logits are the first floating-point tensor whose last dimension is the number of experts.
"""

import logging
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .outputs import router_logits_from_output

__all__ = [
    "ExpertOutput",
    "MoEHookError",
    "MoEInspector",
    "MoELayerRecord",
    "MoELayerSpec",
    "RouterNotFoundError",
    "find_moe_layers",
]

logger = logging.getLogger(__name__)

ROUTER_NAMES = ("router", "gate", "gating", "gate_network")
TOP_K_NAMES = ("top_k", "num_experts_per_tok", "topk", "k", "num_selected_experts")
# Wrappers whose parameters live under a prefix: DataParallel and DDP (``module.``) and
# torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class RouterNotFoundError(ValueError):
    """No MoE router was found in a model, or a given module path does not exist."""


class MoEHookError(RuntimeError):
    """The hooks recorded nothing usable during a forward pass."""


@dataclass
class MoELayerSpec:
    """One MoE layer found in a model: its router and experts with their module paths."""

    name: str
    router_name: str
    router: nn.Module
    experts: List[Tuple[str, nn.Module]]
    top_k: Optional[int]


@dataclass
class ExpertOutput:
    """Output of one expert during the recorded forward pass.

    Attributes:
        expert: index of the expert in its layer.
        name: module path of the expert.
        output: the expert's output, one row per routing unit it processed.
        rows: indices of those units in the flattened (N * U) units of the layer, or ``None``
            when the hooks cannot tell which units the expert saw (see ``MoELayerRecord``).
    """

    expert: int
    name: str
    output: torch.Tensor
    rows: Optional[torch.Tensor]


@dataclass
class MoELayerRecord:
    """Router logits, routing and expert outputs of one MoE layer in the recorded pass.

    Attributes:
        name: module path of the router.
        router_logits: shape (N, U, M); U = 1 for clip-level routing.
        top_k: number of experts selected per unit.
        selected_experts: shape (N, U, top_k), indices of the top-k router logits.
        gate_weights: shape (N, U, top_k), the softmax over all M router logits taken at the
            selected experts (Switch Transformer gating, which the library's models use, so
            that even top-1 routing passes gradient to the router). A layer with other gating
            combines its experts differently, and these weights then only approximate it.
        expert_outputs: one entry per expert call, in call order.

    The rows of an expert are the units whose top-k selection contains it, in ascending order
    of the flattened unit index n * U + u, which is how sparse dispatch is usually written. When
    an expert's output has another number of rows, its ``rows`` is ``None``.
    """

    name: str
    router_logits: torch.Tensor
    top_k: int
    selected_experts: torch.Tensor
    gate_weights: torch.Tensor
    expert_outputs: List[ExpertOutput] = field(default_factory=list)

    @property
    def num_units(self) -> int:
        return self.router_logits.shape[1]

    @property
    def num_experts(self) -> int:
        return self.router_logits.shape[2]


def _strip_wrapper_prefix(path: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if path.startswith(prefix):
                path = path[len(prefix):]
                stripped = True
    return path


def _resolve(model: nn.Module, path: str, what: str) -> nn.Module:
    """Find a submodule by path, also through DataParallel, DDP and torch.compile wrappers."""
    for prefix in ("", "module.", "_orig_mod.", "_orig_mod.module.", "module._orig_mod."):
        try:
            return model.get_submodule(prefix + path)
        except AttributeError:
            continue

    known = [name for name, _ in model.named_modules() if name][:20]
    raise RouterNotFoundError(
        f"{what} path {path!r} does not name a submodule of {type(model).__name__}; "
        f"module paths look like {known}"
    )


def _expert_modules(container: nn.Module) -> Optional[List[Tuple[str, nn.Module]]]:
    if isinstance(container, nn.ModuleList):
        return [(str(i), module) for i, module in enumerate(container)]
    if isinstance(container, nn.ModuleDict):
        return list(container.items())

    inner = getattr(container, "deepspeed_experts", None)
    if isinstance(inner, (nn.ModuleList, nn.ModuleDict)):
        return [("deepspeed_experts." + name, module) for name, module in _expert_modules(inner)]
    return None


def _router_module(layer: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    for attribute in ROUTER_NAMES:
        router = getattr(layer, attribute, None)
        if not isinstance(router, nn.Module):
            continue

        # DeepSpeed and fairscale gates return (aux_loss, combine_weights, ...); their logits
        # come out of the linear layer ``wg``.
        inner = getattr(router, "wg", None)
        if isinstance(inner, nn.Linear):
            return attribute + ".wg", inner
        return attribute, router
    return None


def _read_top_k(*modules: nn.Module) -> Optional[int]:
    for module in modules:
        for attribute in TOP_K_NAMES:
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def find_moe_layers(
    model: nn.Module,
    routers: Optional[Sequence[str]] = None,
    experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
    top_k: Optional[int] = None,
) -> List[MoELayerSpec]:
    """Find the MoE layers of ``model``; see the module docstring for the search order.

    Raises:
        RouterNotFoundError: when no router is found, or a given path does not exist.
        ValueError: when ``experts`` does not have one entry per router.
    """
    if routers is not None:
        return _layers_from_paths(model, routers, experts, top_k)
    if experts is not None:
        raise ValueError(
            "experts= was given without routers=; pass the router module paths too, one per "
            "entry of experts"
        )

    layers = []
    for name, module in model.named_modules():
        found_router = _router_module(module)
        container = getattr(module, "experts", None)
        expert_list = _expert_modules(container) if isinstance(container, nn.Module) else None
        if found_router is None or expert_list is None:
            continue

        router_attribute, router = found_router
        layers.append(
            MoELayerSpec(
                name=_strip_wrapper_prefix(name),
                router_name=_strip_wrapper_prefix(_join(name, router_attribute)),
                router=router,
                experts=[
                    (_strip_wrapper_prefix(_join(name, "experts." + key)), expert)
                    for key, expert in expert_list
                ],
                top_k=top_k if top_k is not None else _read_top_k(module, router),
            )
        )

    if not layers:
        raise RouterNotFoundError(
            f"no MoE router found in {type(model).__name__}. Searched every submodule for a "
            f"router attribute named one of {list(ROUTER_NAMES)} (or a gate with a 'wg' linear "
            "layer) next to an 'experts' nn.ModuleList or nn.ModuleDict. Pass the module paths "
            "instead, e.g. routers=['blocks.0.moe.gate'], experts=['blocks.0.moe.experts']"
        )
    return layers


def _layers_from_paths(model, routers, experts, top_k) -> List[MoELayerSpec]:
    if isinstance(routers, str):
        routers = [routers]
    if isinstance(experts, str):
        experts = [experts]
    if len(routers) == 0:
        raise ValueError("routers=[] names no router; pass at least one module path or None")
    if experts is not None and len(experts) != len(routers):
        raise ValueError(
            f"experts has {len(experts)} entries but routers has {len(routers)}; pass one "
            "experts container path (or list of expert paths) per router"
        )

    layers = []
    for index, router_path in enumerate(routers):
        router = _resolve(model, router_path, "router")
        expert_list: List[Tuple[str, nn.Module]] = []

        if experts is not None:
            entry = experts[index]
            if isinstance(entry, str):
                container = _resolve(model, entry, "experts")
                found = _expert_modules(container)
                if found is None:
                    raise RouterNotFoundError(
                        f"experts path {entry!r} names a {type(container).__name__}, not an "
                        "nn.ModuleList or nn.ModuleDict; pass a list of expert module paths"
                    )
                expert_list = [(_join(entry, key), module) for key, module in found]
            else:
                expert_list = [(path, _resolve(model, path, "expert")) for path in entry]

        layers.append(
            MoELayerSpec(
                name=router_path,
                router_name=router_path,
                router=router,
                experts=expert_list,
                top_k=top_k if top_k is not None else _read_top_k(router),
            )
        )
    return layers


class MoEInspector:
    """Record router logits, gate weights, selected experts and expert outputs of a MoE.

    A context manager: hooks are registered on entry and removed on exit, also when the
    model's forward raises. Each forward pass of ``model`` starts a new recording, so
    ``layers`` always describes the latest pass. Recorded tensors keep their autograd graph,
    so objectives built from them can be differentiated with respect to the input.

    Arguments:
        model (nn.Module): the MoE, possibly wrapped in ``nn.DataParallel`` or DDP.
        routers (list of str, optional): module paths of the routers. (Default: None, search)
        experts (list, optional): per router, the path of its experts container or a list of
            expert paths. (Default: None, search; with ``routers`` given, no expert outputs)
        top_k (int, optional): experts selected per routing unit, for layers without a
            ``top_k``-like attribute.
            (Default: None: the layer's ``top_k``-like attribute, else inferred from the expert
            calls, else 1)
        record_experts (bool): record expert outputs. (Default: True)

    Example::

        >>> with MoEInspector(model) as inspector:
        ...     model(videos)
        >>> inspector.layers[0].router_logits.shape
        torch.Size([8, 1, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        routers: Optional[Sequence[str]] = None,
        experts: Optional[Sequence[Union[str, Sequence[str]]]] = None,
        top_k: Optional[int] = None,
        record_experts: bool = True,
    ):
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        if hasattr(model, "_orig_mod"):
            # Measured with torch 2.14: graphs compiled by torch.compile ran the router hooks
            # twice per forward pass, so the records cannot be trusted.
            raise MoEHookError(
                f"{type(model).__name__} is compiled with torch.compile, whose graphs do not run "
                "forward hooks once per pass as eager modules do; inspect or attack the "
                "uncompiled module instead: pass model._orig_mod (same weights)"
            )
        self.model = model
        self.specs = find_moe_layers(model, routers, experts, top_k)
        self.record_experts = record_experts
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._lock = threading.Lock()
        self._records: Dict[Tuple[int, int], List[dict]] = {}
        self._batch_sizes: Dict[str, int] = {}
        self._passes = 0

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> "MoEInspector":
        if self._handles:
            raise RuntimeError("this MoEInspector is already active; it cannot be entered twice")
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and drop the recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._records = {}
            self._batch_sizes = {}

    # -- registration ----------------------------------------------------------------------

    def _register(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_start))

        # Under DataParallel each replica of the inner module receives its own chunk of the batch.
        inner = getattr(self.model, "module", None)
        if isinstance(inner, nn.Module):
            self._handles.append(inner.register_forward_pre_hook(self._on_chunk_start))
        else:
            self._handles.append(self.model.register_forward_pre_hook(self._on_chunk_start))

        for layer_index, spec in enumerate(self.specs):
            self._handles.append(
                spec.router.register_forward_hook(self._router_hook(layer_index))
            )
            if not self.record_experts:
                continue
            for expert_index, (name, expert) in enumerate(spec.experts):
                self._handles.append(
                    expert.register_forward_hook(self._expert_hook(layer_index, expert_index, name))
                )

    def _on_model_start(self, module, args) -> None:
        self.clear()
        self._passes += 1

    def _on_chunk_start(self, module, args) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is not None and first.dim() > 0:
            with self._lock:
                self._batch_sizes[str(first.device)] = first.shape[0]

    def _router_hook(self, layer_index: int):
        spec = self.specs[layer_index]
        num_experts = len(spec.experts) or None

        def hook(module, args, output):
            logits = router_logits_from_output(output, num_experts)
            if logits is None or logits.dim() < 1:
                raise MoEHookError(
                    f"router {spec.router_name!r} returned {type(output).__name__}, in which no "
                    "floating-point logits tensor was found; pass routers= with the path of the "
                    "module that outputs the logits"
                )
            with self._lock:
                batch_size = self._batch_sizes.get(str(logits.device))
                calls = self._records.setdefault((layer_index, _device_index(logits)), [])
                calls.append({"logits": _to_units(logits, batch_size), "experts": []})

        return hook

    def _expert_hook(self, layer_index: int, expert_index: int, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                output = router_logits_from_output(output, None)
                if output is None:
                    return
            with self._lock:
                calls = self._records.get((layer_index, _device_index(output)))
                if calls:
                    calls[-1]["experts"].append((expert_index, name, output))

        return hook

    # -- results ---------------------------------------------------------------------------

    @property
    def passes(self) -> int:
        """Number of forward passes of the model seen since the hooks were registered."""
        return self._passes

    @property
    def layers(self) -> List[MoELayerRecord]:
        """Records of the latest forward pass, one per router call, in layer order."""
        with self._lock:
            snapshot = {key: list(calls) for key, calls in self._records.items()}

        records = []
        for layer_index, spec in enumerate(self.specs):
            devices = sorted(device for (index, device) in snapshot if index == layer_index)
            if not devices:
                continue
            per_device = [snapshot[(layer_index, device)] for device in devices]
            for call in range(min(len(calls) for calls in per_device)):
                chunks = [calls[call] for calls in per_device]
                suffix = f"#{call}" if call else ""
                records.append(self._build_record(spec, spec.router_name + suffix, chunks))
        return records

    def require_layers(self) -> List[MoELayerRecord]:
        """Return ``layers``, raising ``MoEHookError`` when the latest pass recorded nothing."""
        layers = self.layers
        if layers:
            return layers

        raise MoEHookError(
            "the forward pass recorded no router logits from the routers "
            f"{[spec.router_name for spec in self.specs]}. Check that these routers run in the "
            "model's forward; a submodule compiled with torch.compile can skip Python hooks, so "
            "inspect its uncompiled module (module._orig_mod) instead"
        )

    def _build_record(self, spec: MoELayerSpec, name: str, chunks: List[dict]) -> MoELayerRecord:
        target = chunks[0]["logits"].device
        logits = torch.cat([chunk["logits"].to(target) for chunk in chunks], dim=0)
        num_units, num_experts = logits.shape[1], logits.shape[2]

        # Row offsets of each chunk in the flattened (N * U) units of the whole batch.
        offsets, total = [], 0
        for chunk in chunks:
            offsets.append(total)
            total += chunk["logits"].shape[0] * num_units

        expert_calls = [
            (index, expert_name, output, offset)
            for chunk, offset in zip(chunks, offsets)
            for index, expert_name, output in chunk["experts"]
        ]
        top_k = spec.top_k or _infer_top_k(expert_calls, total) or 1
        top_k = min(top_k, num_experts)

        selected = logits.topk(top_k, dim=-1).indices
        gate_weights = torch.softmax(logits, dim=-1).gather(-1, selected)

        expert_outputs = []
        flat_selected = selected.reshape(-1, top_k)
        seen = set()
        for index, expert_name, output, offset in expert_calls:
            rows = None
            if (index, offset) not in seen:
                chunk_units = flat_selected[offset:]
                candidate = (chunk_units == index).any(dim=-1).nonzero().flatten()
                # Rows of this chunk only: the next chunk starts where this one's units end.
                candidate = candidate[candidate < _chunk_end(offsets, offset, total) - offset]
                if output.dim() >= 1 and candidate.numel() == output.shape[0]:
                    rows = (candidate + offset).to(output.device)
            seen.add((index, offset))
            expert_outputs.append(ExpertOutput(index, expert_name, output, rows))

        return MoELayerRecord(
            name=name,
            router_logits=logits,
            top_k=top_k,
            selected_experts=selected,
            gate_weights=gate_weights,
            expert_outputs=expert_outputs,
        )


def _chunk_end(offsets: List[int], offset: int, total: int) -> int:
    later = [o for o in offsets if o > offset]
    return min(later) if later else total


def _infer_top_k(expert_calls, total_units: int) -> Optional[int]:
    rows = sum(output.shape[0] for _, _, output, _ in expert_calls if output.dim() >= 1)
    if total_units and rows and rows % total_units == 0:
        return rows // total_units
    return None


def _device_index(tensor: torch.Tensor) -> int:
    return tensor.device.index if tensor.device.index is not None else -1


def _to_units(logits: torch.Tensor, batch_size: Optional[int]) -> torch.Tensor:
    """Reshape router logits to (N, U, M)."""
    num_experts = logits.shape[-1]
    if logits.dim() == 1:
        return logits.reshape(1, 1, num_experts)

    leading = logits.shape[0]
    if batch_size and leading != batch_size and leading % batch_size == 0:
        # Routers that flatten tokens, e.g. (N * U, M) as in Mixtral-style blocks.
        return logits.reshape(batch_size, -1, num_experts)
    return logits.reshape(leading, -1, num_experts)
