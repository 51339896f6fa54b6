"""Where a run executes: the device named by --device, its placement, and what it is."""

from __future__ import annotations

import platform

import torch

from fp16guard.core.versions import package_version
from fp16guard.errors import Fp16GuardError, InputError
from fp16guard.execution import distributed


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA is an environment error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Fp16GuardError("--device cuda: no CUDA device is visible to PyTorch (use --device cpu)")
    if name == "cpu" or name.startswith("cuda"):
        return torch.device(name)
    raise InputError(f"--device must be auto, cuda or cpu, not {name!r}")


def resolve_placement(name: str) -> tuple[torch.device, bool]:
    """A device (each rank's own GPU under torchrun), or for ``map`` the first GPU and True:
    the model's blocks spread over every visible GPU."""
    if name == "map":
        if distributed.current() is not None:
            raise InputError("'map' spreads one model over every GPU; it cannot be combined with several processes")
        if not torch.cuda.is_available():
            raise Fp16GuardError("'map' spreads the model over GPUs, and no CUDA device is visible to PyTorch")
        return torch.device("cuda", 0), True
    return distributed.local_device(resolve_device(name)), False


def environment(device: torch.device) -> dict:
    """Versions and hardware, for the report. ``cuda`` is the CUDA version in use, None when no
    GPU runs (a CUDA build of torch on a CPU run says so in ``torch_cuda_build`` only)."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "torch_cuda_build": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU",
        # SDPA may pick cuDNN's attention, whose behaviour (plans per shape, past NaN bugs)
        # depends on its version: each attempt's timing names the kernel that ran.
        "cudnn": (torch.backends.cudnn.version()
                  if device.type == "cuda" and torch.backends.cudnn.is_available() else None),
    }
    for package in ("fair-esm", "transformers"):
        info[package] = package_version(package)
    return info
