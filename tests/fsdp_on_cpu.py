"""`reprkit` under accelerate's FSDP2 on CPU processes (gloo), for the test suite only.

`accelerate launch --config_file configs/accelerate/fsdp.yaml` starts the processes and sets the
FSDP variables on any machine, but accelerate only switches to FSDP on GPU-like devices: on the CPU
it reports MULTI_CPU and ignores them. PyTorch's FSDP2 (`fully_shard`) itself runs on the CPU over
gloo, so this entry point flips accelerate's state to FSDP with the plugin read from those
variables, then runs the ordinary CLI: everything after that (wrapping, sharded forward/backward,
gradient clipping, gathering checkpoints) is accelerate's and reprkit's own FSDP2 code path.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --mixed_precision no -m tests.fsdp_on_cpu train ...
"""

import sys

from accelerate import DistributedType
from accelerate.utils import FullyShardedDataParallelPlugin

import reprkit.training.loop as T
from reprkit.cli import main

_make_accelerator = T.make_accelerator


def make_fsdp_accelerator():
    accelerator = _make_accelerator()
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise SystemExit(f"expected MULTI_CPU processes to turn into FSDP, got {accelerator.distributed_type}")
    accelerator.state.distributed_type = DistributedType.FSDP
    plugin = FullyShardedDataParallelPlugin()  # from accelerate launch's FSDP_* variables
    if accelerator.mixed_precision != "no":  # as accelerate's state does for FSDP
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    print(f"forced FSDP{accelerator.state.fsdp_plugin.fsdp_version} on {accelerator.device} processes", flush=True)
    return accelerator


T.make_accelerator = make_fsdp_accelerator

if __name__ == "__main__":
    sys.exit(main())
