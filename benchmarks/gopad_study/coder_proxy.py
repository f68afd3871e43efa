"""Coded bits of an SSF unit against two training estimates, per latent stream (issue 14, gop-adapters'
``rate_proxy``): ``rounded`` (the rounded latents under the hyper-decoder's continuous scales, likelihoods
bounded at 1e-9: the default before) and ``coder`` (the coding table's scales, the coder's 2^-24 floor: the
default now, what `adaptjobs info --rates` prints as `estimated`). Each estimate adds 32 bits per stream
(workers.rate_audit.ANS_STREAM_BITS).

    PYTHONPATH=$PWD python benchmarks/gopad_study/coder_proxy.py UNIT_DIR
"""

import sys
from collections import defaultdict
from pathlib import Path

import torch

import workers.rate_audit as audit

sums: dict = defaultdict(lambda: defaultdict(float))
original = audit._audit_latent


def bits(likelihoods: torch.Tensor) -> float:
    return float(-torch.log2(likelihoods.double()).sum())


def measure(hyperprior, y_stream, z_stream, z_table, latents, z_shape, y_size, what):
    y_hat, rows = original(hyperprior, y_stream, z_stream, z_table, latents, z_shape, y_size, what)
    z_hat = z_table.dequantize(z_table.decode(z_stream, z_shape, what="z"))
    means, _ = hyperprior.latent_parameters(z_hat, y_size)
    scales = hyperprior.hyper_decoder_scale(z_hat)[..., : y_size[0], : y_size[1]]
    conditional, bottleneck = hyperprior.gaussian_conditional, hyperprior.entropy_bottleneck
    rounded = (bits(conditional.priced(y_hat, scales, means, snap_scales=False, coder_floor=False)),
               bits(bottleneck.likelihood(z_hat, coder_floor=False)))
    for (stream, coded, _, coder, _), old in zip(rows, rounded):
        entry = sums[f"{what} {stream}"]
        for key, value in (("streams", 1), ("coded", coded), ("rounded", old), ("coder", coder)):
            entry[key] += value
    return y_hat, rows


audit._audit_latent = measure
with torch.no_grad():
    audit.stream_rates_of(Path(sys.argv[1]))
p_frames: dict = defaultdict(float)
for name, entry in sums.items():
    fixed = audit.ANS_STREAM_BITS * entry["streams"]
    print(f"{name:16s} coded {entry['coded']:9.0f} | rounded {entry['rounded'] + fixed:9.0f} "
          f"({entry['coded'] / (entry['rounded'] + fixed) - 1:+.2%}) | coder {entry['coder'] + fixed:9.0f} "
          f"({entry['coded'] / (entry['coder'] + fixed) - 1:+.2%})")
    if not name.startswith("I-frame"):
        for key, value in entry.items():
            p_frames[key] += value
if p_frames:
    fixed = audit.ANS_STREAM_BITS * p_frames["streams"]
    print(f"P-frames: coded against rounded {p_frames['coded'] / (p_frames['rounded'] + fixed) - 1:+.2%}, "
          f"against coder {p_frames['coded'] / (p_frames['coder'] + fixed) - 1:+.2%}")
