import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.hardware import Accelerator, cpu_has_native_bf16, resolve_device, resolve_precision

CPU = torch.device("cpu")


def test_auto_precision_on_cpu_follows_native_bf16_support():
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("name, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_explicit_precisions(name, dtype):
    assert resolve_precision(name, CPU) == dtype


def test_unknown_precision_lists_the_choices():
    with pytest.raises(ConfigError, match="precision='int4' is not supported; choose one of auto, fp32, bf16, fp16"):
        resolve_precision("int4", CPU)


def test_device_resolution():
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match="device='tpu9' is not a torch device"):
        resolve_device("tpu9")


def test_channels_last_inputs_and_model():
    accel = Accelerator(CPU, channels_last=True)
    images = accel.inputs(torch.rand(2, 3, 8, 8))
    assert images.is_contiguous(memory_format=torch.channels_last)
    model = accel.prepare(torch.nn.Conv2d(3, 4, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)


def test_inputs_normalise_uint8_batches_and_pass_floats_through():
    accel = Accelerator(CPU)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert accel.inputs(images).dtype == torch.float32 and accel.inputs(images).min() < 0
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(accel.inputs(floats), floats)


def test_batch_memory_is_kept_for_reuse_on_glibc():
    """What loaders and benchmarks call; on glibc both thresholds apply (mallopt answers 1)."""
    import platform

    from pipeline.hardware import keep_batch_memory

    assert keep_batch_memory() is (platform.libc_ver()[0] == "glibc")
