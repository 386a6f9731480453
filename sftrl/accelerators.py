"""What a run asks a scheduler for: `config.accelerator`, parsed.

    ""            nothing asked: the run uses the host it is started on (local runs, tests)
    "v5p-64"      a TPU slice by its Cloud TPU name (TensorCores for v4/v5p, chips for v5e/v6e)
    "v5p:2x4x4"   a TPU slice by its chip grid
    "h100:8"      8 GPUs on one host; "h100:8x2": 8 GPUs on each of 2 hosts

The launcher (`sftrl.launch --launcher=xm`) turns it into an XManager job requirement and
validates the run's mesh against its device count; `sftrl.plan` reads the same TPU names.
"""

from __future__ import annotations

import dataclasses
import re

# GPU names as xmanager's ResourceType spells them (lower case); tests check each is one of
# xmanager's GPU types.
GPU_TYPES = ("t4", "l4_24th", "v100", "a100", "a100_80gib", "h100", "h100_mega", "h200",
             "b200")
# One host holds at most this many chips of a multi-host slice (Cloud TPU: 4 for v4/v5p, and
# for v5e/v6e slices beyond their 8-chip single-host shape).
_CHIPS_PER_HOST = 4
_SINGLE_HOST_CHIPS = {"v5e": 8, "v6e": 8}


class AcceleratorError(ValueError):
    """An accelerator string that names no slice or GPU set."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    kind: str  # "tpu" | "gpu"
    resource: str  # xmanager's ResourceType name, lower case: "tpu_v5p", "h100"
    topology: str  # TPU: the chip grid "2x4x4"; GPU: per-host count, "x<hosts>" if several
    num_devices: int  # JAX devices the run sees (one per TPU chip, one per GPU)
    num_hosts: int  # processes the run has (jax.distributed over several)


def parse(text: str) -> Accelerator | None:
    """`config.accelerator` -> Accelerator (None for ""); AcceleratorError names the text."""
    text = text.strip().lower()
    if not text:
        return None
    gpu = re.fullmatch(r"([a-z0-9_]+):(\d+)(?:x(\d+))?", text)
    if gpu and gpu.group(1) in GPU_TYPES:
        per_host, hosts = int(gpu.group(2)), int(gpu.group(3) or 1)
        if per_host < 1 or hosts < 1:
            raise AcceleratorError(f"{text!r}: GPU and host counts must be positive")
        topology = f"{per_host}x{hosts}" if hosts > 1 else str(per_host)
        return Accelerator("gpu", gpu.group(1), topology, per_host * hosts, hosts)
    if not re.match(r"v\d", text):
        raise AcceleratorError(
            f"{text!r} is not a TPU slice (v5p-64, v5e-16, v5p:2x4x4) or GPUs "
            f"(<type>:<count>[x<hosts>], type one of {', '.join(GPU_TYPES)})")
    from sftrl import plan  # the Cloud TPU naming rules live with the compiler's topologies

    try:
        topology = plan.parse_topology(text)
    except plan.PlanError as error:
        raise AcceleratorError(str(error).removeprefix("topology: ")) from None
    chips = topology.num_chips
    single = _SINGLE_HOST_CHIPS.get(topology.chip.name, _CHIPS_PER_HOST)
    hosts = 1 if chips <= single else chips // _CHIPS_PER_HOST
    return Accelerator("tpu", f"tpu_{topology.chip.name}", "x".join(map(str, topology.shape)),
                       chips, hosts)
