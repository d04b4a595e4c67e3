"""Where and how the arithmetic runs: device, mixed precision, memory format and ranks."""

from __future__ import annotations

import contextlib
import ctypes
import logging
from dataclasses import dataclass, field

import torch

from pipeline.config import require_choice
from pipeline.data.dataset import normalize_batch
from pipeline.distributed import DistContext
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# glibc's mallopt parameters, and the sizes below which freed memory stays with the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_ALLOCATIONS_BELOW = 256 * 2**20  # a 512 px float batch of 16 is 50 MB; glibc maps anything over 32 MB afresh
TRIM_ABOVE = 1024 * 2**20


def keep_batch_memory() -> bool:
    """Lets glibc reuse freed batch-sized blocks instead of mapping fresh pages for every batch.

    glibc serves each allocation over its mmap threshold (at most 32 MB) from new pages and
    returns them on free, so every 512 px batch of 16 (50 MB as floats) page-faults afresh: that
    halved the images/s the loaders delivered on a 2-core CPU. Forked loader workers inherit the
    setting. Returns whether it applied (glibc only; elsewhere nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    applied = libc.mallopt(_M_MMAP_THRESHOLD, KEEP_ALLOCATIONS_BELOW) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_ABOVE) == 1 and applied


@dataclass(frozen=True)
class Accelerator:
    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: plain fp32
    channels_last: bool = False
    dist: DistContext = field(default_factory=DistContext)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A loader batch on the device, ready for the network: uint8 batches are normalised here."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = normalize_batch(images)
        # channels_last lets oneDNN / cuDNN pick NHWC kernels, which are faster for convolutions; the
        # loader's batches already come that way, so only the other choice may cost a copy.
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 autocast was ~14x slower than fp32 (shared/FACTS.md)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means fp32 without autocast."""
    require_choice("precision", name, PRECISIONS)
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    dtype = torch.bfloat16 if name == "bf16" else torch.float16
    if device.type == "cpu" and not (dtype == torch.bfloat16 and cpu_has_native_bf16()):
        log.warning("precision=%s on a CPU without native support runs slower than fp32", name)
    return dtype
