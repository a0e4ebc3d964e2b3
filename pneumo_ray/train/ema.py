"""Weight EMA of the fine-tuned model: validation, checkpoint selection, the saved best weights and
the test evaluation score the average, training steps the live weights (loop.py).

The average is torch's `AveragedModel` (the copy, its `n_averaged` counter, its state dict) updated
as its `get_ema_multi_avg_fn` does, one foreach lerp per step, but with the counter kept on the host:
`AveragedModel.update_parameters` copies the counter to the device for each group of parameters at
every step, and each such copy makes the host wait for a GPU. The decay at step t is
min(decay, (1 + t)/(10 + t)), TensorFlow's `ExponentialMovingAverage(num_updates=t)` rule: the CPU
preset fine-tunes for about 780 steps, and a fixed decay of 0.999 would still give the starting
(pre-trained) weights 0.999^780 = 46 % of the average at the end; with the warm-up the average spans
about the last t/9 steps, at most 1/(1 − decay).

BatchNorm: its running statistics are averaged with the weights (as `use_buffers=True`), over the
same window, so the average's statistics follow the activations of the weights it averages. The
alternatives cost more or fit worse: recomputing them with `update_bn` is one more forward pass over
the training images before every validation (a third of an epoch on the CPU); keeping the live
model's statistics pairs them with other weights. Integer buffers (BatchNorm's batch counter) are
copied, not averaged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0  # updates so far (= AveragedModel.n_averaged, which stays on the CPU)
        self.averaged = AveragedModel(model, use_buffers=True)
        mine = _tensors(self.averaged.module)
        self._floating = [k for k, t in enumerate(mine) if torch.is_floating_point(t)]
        self._other = [k for k, t in enumerate(mine) if not torch.is_floating_point(t)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """After an optimizer step: fold the live weights (and buffers) of `model` into the average."""
        mine, live = _tensors(self.averaged.module), [t.detach() for t in _tensors(model)]
        if self.steps == 0:  # the first update copies, as AveragedModel's does
            torch._foreach_copy_(mine, live)
        else:
            decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
            torch._foreach_lerp_([mine[k] for k in self._floating], [live[k] for k in self._floating], 1 - decay)
            if self._other:
                torch._foreach_copy_([mine[k] for k in self._other], [live[k] for k in self._other])
        self.steps += 1
        self.averaged.n_averaged += 1

    @property
    def model(self) -> nn.Module:
        """The averaged model (the same architecture as the live one)."""
        return self.averaged.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state, strict=True)
        self.steps = int(state["n_averaged"])
