"""5-D aware normalization for torchattacks attacks on video.

torchattacks 3.5.1 reshapes mean and std to (1, C, 1, 1), which fails on (N, C, T, H, W)
input, or normalizes frame t with channel t's statistics when T equals C.
"""

import torch

__all__ = ["VideoNormalizationMixin"]


class VideoNormalizationMixin:
    """Per-channel ``set_normalization_used``, ``normalize`` and ``inverse_normalize`` for
    torchattacks attacks on 5-D video.

    Put it before ``torchattacks.attack.Attack`` in the bases. The class must set
    ``time_dim``: the channel axis is 1 for (N, C, T, H, W) input (``time_dim=2``) and 2 for
    (N, T, C, H, W) input (``time_dim=1``).
    """

    time_dim: int = 2

    def set_normalization_used(self, mean, std) -> None:
        """Declare that the model takes normalized videos ``(x - mean) / std``.

        As in torchattacks, the attack is then called on normalized videos and returns
        normalized adversarial videos; eps and [0, 1] apply to the unnormalized pixels.
        ``mean`` and ``std`` are per channel and broadcast over the channel axis of 5-D input
        (axis 1, or axis 2 with ``time_dim=1``).
        """
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() != std.numel():
            raise ValueError(
                f"mean has {mean.numel()} values and std has {std.numel()}; pass one per channel"
            )
        if not torch.all(std > 0):
            raise ValueError(f"std must be positive, got {std.tolist()}")

        # Filled in place because torchattacks' __setattr__ compares every assigned value with
        # `in`, which raises on tensors with several elements.
        self.normalization_used = {}
        self.normalization_used["mean"] = mean
        self.normalization_used["std"] = std
        self._set_normalization_applied(True)

    def _channel_shaped(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = [1] * like.dim()
        channel_axis = 2 if self.time_dim == 1 else 1
        if like.dim() > channel_axis:
            shape[channel_axis] = values.numel()
        return values.to(device=like.device, dtype=like.dtype).reshape(shape)

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        mean = self._channel_shaped(self.normalization_used["mean"], inputs)
        std = self._channel_shaped(self.normalization_used["std"], inputs)
        return (inputs - mean) / std

    def inverse_normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        mean = self._channel_shaped(self.normalization_used["mean"], inputs)
        std = self._channel_shaped(self.normalization_used["std"], inputs)
        return inputs * std + mean
