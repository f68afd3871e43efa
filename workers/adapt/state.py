"""Atomic, resumable adaptation state: tensors in safetensors, counters and scheduler state in its JSON
metadata. Nothing is pickled; a state from another config is refused."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workers.atomic import atomic_write_bytes
from workers.errors import InputError

STATE_FORMAT = "adaptjobs-adapt-state-1"


def optimizer_tensors(optimizer: torch.optim.Optimizer, label: str) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{label}.{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    return tensors, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, label: str, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    prefix = f"{label}."
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    for group, saved in zip(state_dict["param_groups"], groups):
        group.update(saved)
    optimizer.load_state_dict(state_dict)


def save_state(path: Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    from safetensors.torch import save

    from workers.device import to_cpu_state_dict

    metadata = {"format": STATE_FORMAT, "info": json.dumps(info, sort_keys=True)}
    # CPU tensors whatever device trained: a unit interrupted on a GPU node resumes on a CPU node (issue 15)
    atomic_write_bytes(path, save(to_cpu_state_dict(tensors), metadata=metadata))


def load_state(path: Path, config_json: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, info) of the state at ``path``, None if there is none; refuses another config's state."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        info = json.loads(metadata.get("info", "null"))
    except Exception as exc:  # a damaged state file is reported, not silently restarted
        raise InputError(path, f"unreadable adaptation checkpoint ({exc}); delete it to start over") from None
    if metadata.get("format") != STATE_FORMAT or not isinstance(info, dict):
        raise InputError(path, "not an adaptation checkpoint of this adaptjobs version; delete it to start over")
    if info.get("config") != config_json:
        raise InputError(path, "holds the checkpoint of another adaptation config; use another output folder "
                               "or delete the checkpoint")
    return tensors, info
