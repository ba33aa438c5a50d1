"""Rules that turn what a model or a router returns into a logits tensor."""

from typing import Any, Optional

import torch

__all__ = ["logits_from_output", "router_logits_from_output"]


def logits_from_output(output: Any) -> torch.Tensor:
    """Extract class logits from a model's output.

    The rule, in order: a tensor is the logits; a mapping gives its ``"logits"`` entry; an
    object with a tensor attribute ``logits`` (Hugging Face ``ModelOutput``) gives that
    attribute; a tuple or list gives its first element, so ``(logits, aux_loss)`` works.
    Pass ``output_to_logits=`` to an attack to use another rule.

    Raises:
        TypeError: when none of the rules yields a tensor.
    """
    if isinstance(output, torch.Tensor):
        return output

    if isinstance(output, dict):
        if "logits" in output and isinstance(output["logits"], torch.Tensor):
            return output["logits"]
        raise TypeError(
            f"the model returned a dict with keys {sorted(map(str, output))} but no tensor "
            "under 'logits'; pass output_to_logits=lambda out: out[KEY] to the attack"
        )

    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits

    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]

    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; expected a "
        "tensor, a (logits, ...) tuple or a dict with 'logits', or pass output_to_logits="
    )


def router_logits_from_output(output: Any, num_experts: Optional[int]) -> Optional[torch.Tensor]:
    """Extract router logits from what a router module returned, or ``None``.

    A tensor is the logits. From a tuple or list, the first floating-point tensor whose last
    dimension equals ``num_experts`` is taken (the first element when ``num_experts`` is
    unknown), which covers ``(logits, aux_loss)`` and ``(logits, weights, indices)`` gates.
    """
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None

    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if num_experts is not None:
            tensors = [t for t in tensors if t.dim() >= 1 and t.shape[-1] == num_experts]
        return tensors[0] if tensors else None

    return None
