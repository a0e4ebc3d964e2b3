"""Where the loop's batches come from: the host memory map, copied one batch at a time (the CPU
path), or a copy of the whole set held on the training device and gathered there by index (the
GPU path: the 224 px Kermany set is ~260 MB of uint8, so every worker can keep it on its GPU and no
step waits on the host for pixels). Both give the same uint8 pixels and labels in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pneumo_ray.data.study_data import ImageSet


class ResidentSet:
    """An ImageSet's decoded uint8 images and its labels, copied to `device` once.

    `labels` stays a host array (class weights and the AUC are computed on the host, once an epoch);
    `targets` is the same labels as float32 on the device, for the loss."""

    def __init__(self, data: ImageSet, device: torch.device, chunk: int = 1024) -> None:
        n = len(data)
        self.name, self.labels, self.device = data.name, data.labels, device
        self.images = torch.empty((n, *data.images.shape[1:]), dtype=torch.uint8, device=device)
        for i in range(0, n, chunk):  # in chunks: the host never holds a second full copy
            rows = np.arange(i, min(i + chunk, n))
            self.images[i : i + len(rows)] = torch.from_numpy(data.batch(rows)).to(device)
        self.targets = torch.from_numpy(self.labels.astype(np.float32)).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


Batches = ImageSet | ResidentSet


def resident_default(device: torch.device) -> bool:
    """Keep the sets on the device when that device is a GPU; on the CPU the memory map already is
    the host memory, and a second copy would only cost RAM."""
    return device.type == "cuda"


def on_device(data: ImageSet, device: torch.device, resident: bool | None = None) -> Batches:
    """`data` as the loop reads it: a ResidentSet when `resident` (None: `resident_default`)."""
    keep = resident_default(device) if resident is None else resident
    return ResidentSet(data, device) if keep and len(data) else data


def batches(
    data: Batches, order: list[np.ndarray], device: torch.device, labels: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(uint8 images [B, S, S], float32 labels [B] or None) on `device`, one pair per row batch of `order`.

    A ResidentSet uploads the epoch's row order once and then only gathers on the device: no step
    copies from the host, so none waits for the device to finish the previous one."""
    if not order:
        return
    if isinstance(data, ResidentSet):
        flat = torch.from_numpy(np.concatenate(order)).to(data.device)
        for idx in flat.split([len(rows) for rows in order]):
            yield data.images[idx], (data.targets[idx] if labels else None)
        return
    for rows in order:
        x = torch.from_numpy(data.batch(rows)).to(device, non_blocking=True)
        y = torch.tensor(data.labels[rows], dtype=torch.float32, device=device) if labels else None
        yield x, y
