"""Where the work runs: the one reading of a --device setting, for ingest, the index and the probe."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:   # torch is imported only when a device is chosen: `actdb sql` never needs it
    import torch


def choose_device(setting: str) -> "torch.device":
    """'auto' (cuda if available, else cpu) or a torch device name (cpu, cuda, cuda:1, ...)."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(setting)
    except RuntimeError:
        raise InputError(f"--device: expected auto, cpu or cuda[:N], got {setting!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {setting}: no CUDA device is available here")
    return dev
