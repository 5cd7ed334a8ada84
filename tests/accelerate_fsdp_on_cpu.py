"""`accelerate launch ... tests/accelerate_fsdp_on_cpu.py SCRIPT ARGS`: SCRIPT under FSDP on CPU processes (gloo).

accelerate turns FSDP on only for accelerator processes: with `use_cpu: true` it runs plain multi-CPU data parallel
and ignores the FSDP settings. torch's FSDP2 itself runs on CPU, so this launcher keeps accelerate's state at FSDP, with
the plugin accelerate built from configs/accelerate/fsdp.yaml, and the Trainer shards the model as it would on GPUs.
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    # every AcceleratorState() copies the process state (MULTI_CPU) back in: restore FSDP each time
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        self.fsdp_plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
        self.distributed_type = DistributedType.FSDP


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
