"""torchrun worker: torchtitan 0.2.2's own ``torchtitan.train`` entry point on a CPU, for end-to-end tests.

Usage: ``torchrun --nproc_per_node=N tests/torchtitan_cpu_trainer.py --section.key value ...`` (torchtitan's
command line). torchtitan 0.2.2 assumes CUDA in four places that do no training math; they are replaced
before its modules are imported, nothing else is:

* the device type it detects (``torch._utils._get_available_device_type``): "cpu" instead of the
  fallback "cuda", so tensors, the process group (gloo) and autocast use the CPU;
* the device memory monitor (``torch.cuda`` memory statistics): zeros;
* ``set_pg_timeouts`` after step 1 (a barrier with CUDA device ids): skipped;
* the profiler's activities (``profiling.enable_profiling``; ``torchtitan/tools/profiling.py`` lists the CPU and
  the GPU it found, None here): None is dropped, so the CPU is profiled with the same schedule.
"""

from __future__ import annotations

import torch._utils
import torch.profiler

torch._utils._get_available_device_type = lambda: "cpu"

import torchtitan.components.metrics as titan_metrics  # noqa: E402
import torchtitan.distributed.utils as titan_dist_utils  # noqa: E402


class NoDeviceMemory:
    """torchtitan's DeviceMemoryMonitor interface, reporting no device memory."""

    device_name = "cpu"

    def get_peak_stats(self) -> titan_metrics.DeviceMemStats:
        return titan_metrics.DeviceMemStats(0, 0, 0, 0, 0, 0)

    def reset_peak_stats(self) -> None:
        pass


titan_metrics.build_device_memory_monitor = NoDeviceMemory
titan_dist_utils.set_pg_timeouts = lambda **kwargs: None


class CpuProfile(torch.profiler.profile):
    """torch.profiler.profile without the None that torchtitan lists as the activity of an absent GPU."""

    def __init__(self, *args, activities=None, **kwargs):
        super().__init__(*args, activities=[a for a in activities or [] if a is not None] or None, **kwargs)


torch.profiler.profile = CpuProfile  # read by torchtitan/tools/profiling.py when profiling starts

import torchtitan.train as titan_train  # noqa: E402

if __name__ == "__main__":
    titan_train.main(titan_train.Trainer)
