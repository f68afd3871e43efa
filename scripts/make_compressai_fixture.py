"""Write the state-dict LAYOUT of CompressAI's real ``ssf2020`` models into tests/fixtures/compressai/.

Interop tests must take their fixture from the other side, not from our own code: this script asks the
real ``compressai`` package what an ``ssf2020`` checkpoint holds (key names, shapes, dtypes), for the
current key generation (``entropy_bottleneck.matrices.0``) and the old one (``_matrix0``, ``_bias0``,
``_factor0``), and writes one small JSON per metric. No weights: tests/test_compressai_interop.py builds
random tensors to these layouts, torch.save's them and imports them with our loader.

Run it in a separate environment (CompressAI pins its own torch; nothing here is needed at run time):

    python3 -m venv /work/cai-venv
    /work/cai-venv/bin/pip install torch==2.13.0 compressai==1.2.8 numpy
    /work/cai-venv/bin/python scripts/make_compressai_fixture.py [--out tests/fixtures/compressai]

torchvision is stubbed before compressai is imported: CompressAI only reads
``torchvision.transforms.__dict__`` (compressai/registry/transforms.py), and a torchvision built for
another torch fails to import (``operator torchvision::nms does not exist``).

How each layout is made, and why it is the real one:
- "current": ``compressai.zoo.ssf2020(quality, metric, pretrained=False)`` after ``model.update(force=True)``,
  so the derived CDF buffers (``_quantized_cdf``, ``_offset``, ``_cdf_length``, ``scale_table``) have the
  non-empty shapes a checkpoint saved after training has, as the zoo's ``.pth.tar`` files do.
- "old": the current keys renamed with the inverse of CompressAI's own ``compressai.models.utils.KEY_MAP``
  (``_matrix`` -> ``matrices`` ...); the script then checks with the library itself that this is a layout
  CompressAI loads: ``remap_old_keys`` maps every old key back to the current one, and a fresh model's
  ``load_state_dict`` (which renames old keys through it) accepts the old state dict strictly.
The zoo's ``load_pretrained`` also renames ``entropy_bottleneck._matrices.N`` (a ParameterList of older
image models), but only for keys that start with ``entropy_bottleneck.``, which no ``ssf2020`` key does.

A real ``.pth.tar`` is not committed: CompressAI's ScaleSpaceFlow has its widths fixed (128/192), so the
smallest real file is the full model: 34,209,609 parameters, 139,368,977 bytes written by torch.save
(printed by this script), far over what a test fixture should weigh (~2 MB). The layout plus random tensors exercises the same loader path.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import types
from pathlib import Path

METRICS = ("mse", "ms-ssim")
QUALITIES = tuple(range(1, 10))
FIXTURE_QUALITY = 3


def stub_torchvision() -> None:
    """Let ``import compressai`` succeed without a working torchvision (see module docstring)."""
    transforms = types.ModuleType("torchvision.transforms")
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.setdefault("torchvision", torchvision)
    sys.modules.setdefault("torchvision.transforms", transforms)


def layout(state_dict) -> list[list]:
    """[[key, shape, dtype], ...] in the state dict's own order."""
    return [[key, list(tensor.shape), str(tensor.dtype).removeprefix("torch.")] for key, tensor in state_dict.items()]


def old_key_names(model, state_dict) -> dict:
    """The state dict with every EntropyBottleneck parameter under its old name (``_matrix0``...), made with
    the inverse of CompressAI's KEY_MAP and checked against CompressAI's own ``remap_old_keys``."""
    from collections import OrderedDict

    from compressai.entropy_models import EntropyBottleneck
    from compressai.models.utils import KEY_MAP, remap_old_keys

    inverse = {new: old for old, new in KEY_MAP.items()}
    bottlenecks = [name for name, module in model.named_modules() if isinstance(module, EntropyBottleneck)]
    renamed = OrderedDict()
    for key, tensor in state_dict.items():
        for module_name in bottlenecks:
            head, _, rest = key.partition(f"{module_name}.")
            parts = rest.split(".")
            if head == "" and rest and len(parts) == 2 and parts[0] in inverse:
                key = f"{module_name}.{inverse[parts[0]]}{parts[1]}"
        renamed[key] = tensor
    remapped = renamed
    for module_name in bottlenecks:
        remapped = remap_old_keys(module_name, remapped)
    if list(remapped) != list(state_dict):
        raise SystemExit("CompressAI's remap_old_keys does not map the old names back to the current ones")
    return renamed


def check_compressai_loads(zoo_factory, quality: int, metric: str, state_dict) -> None:
    """A fresh CompressAI model accepts ``state_dict`` strictly (its load_state_dict renames old keys)."""
    fresh = zoo_factory(quality=quality, metric=metric, pretrained=False)
    fresh.load_state_dict(dict(state_dict), strict=True)


def layouts_for(metric: str) -> dict:
    import compressai
    import torch
    from compressai.zoo import ssf2020

    torch.manual_seed(0)
    model = ssf2020(quality=FIXTURE_QUALITY, metric=metric, pretrained=False)
    model.update(force=True)
    current = model.state_dict()
    for quality in QUALITIES:  # the architecture does not depend on the quality: say so, checked
        other = ssf2020(quality=quality, metric=metric, pretrained=False)
        other.update(force=True)
        if [(k, v.shape[:1] if "_quantized_cdf" in k else v.shape) for k, v in other.state_dict().items()] != \
                [(k, v.shape[:1] if "_quantized_cdf" in k else v.shape) for k, v in current.items()]:
            raise SystemExit(f"ssf2020 quality {quality} has another layout than quality {FIXTURE_QUALITY}")
    old = old_key_names(model, current)
    check_compressai_loads(ssf2020, FIXTURE_QUALITY, metric, old)
    check_compressai_loads(ssf2020, FIXTURE_QUALITY, metric, current)
    buffer = io.BytesIO()
    torch.save(current, buffer)
    return {
        "made_by": "scripts/make_compressai_fixture.py",
        "compressai_version": compressai.__version__, "torch_version": torch.__version__,
        "factory": f"compressai.zoo.ssf2020(quality={FIXTURE_QUALITY}, metric={metric!r}, pretrained=False)"
                   " then update(force=True)",
        "same_layout_for_qualities": list(QUALITIES),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_save_bytes": buffer.tell(),
        "generations": {"current": layout(current), "old": layout(old)},
    }


def fixture_text(data: dict) -> str:
    """JSON with one state-dict key per line (small diffs when CompressAI changes a layout)."""
    head = {k: v for k, v in data.items() if k != "generations"}
    lines = [json.dumps(head, indent=1)[:-2] + ",", ' "generations": {']
    for index, (name, rows) in enumerate(data["generations"].items()):
        lines.append(f'  "{name}": [')
        lines += [f"   {json.dumps(row)}" + ("," if i < len(rows) - 1 else "") for i, row in enumerate(rows)]
        lines.append("  ]" + ("," if index < len(data["generations"]) - 1 else ""))
    return "\n".join(lines + [" }", "}"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/compressai"))
    args = parser.parse_args(argv)
    stub_torchvision()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for metric in METRICS:
        data = layouts_for(metric)
        path = out / f"ssf2020-{metric}-layout.json"
        path.write_text(fixture_text(data))
        print(f"{path}: {len(data['generations']['current'])} keys, {data['parameters']} parameters, "
              f"torch.save of the real model {data['torch_save_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
