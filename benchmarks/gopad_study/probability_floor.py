"""Why an SSF unit's hyper-latents can cost fewer coded bits than their information content (issue 14's
estimated-vs-coded gap): the coder's fixed-point tables give every symbol a probability of at least about 2^-24,
while the float tables (and training's likelihood, bounded at 1e-9) charge a far-tail symbol up to ~31 bits.

    PYTHONPATH=$PWD python benchmarks/gopad_study/probability_floor.py UNIT_DIR

Prints, per hyper-latent stream kind (I-frame, motion, residual z): the coded bits, the information content
under the float tables, the same with every probability floored at 2^-24, and how many symbols lie below 2^-24.
"""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import workers.rate_audit as audit

FLOOR = 2.0 ** -24
captured: dict = {"z": []}
original_rates, original_latent = audit.stream_rates, audit._audit_latent


def keep_tables(data, model, tables, source=None):
    captured["tables"] = tables
    return original_rates(data, model, tables, source)


def keep_symbols(hyperprior, y_stream, z_stream, z_table, latents, z_shape, y_size, what):
    captured["z"].append((what, z_table, z_table.decode(z_stream, z_shape, what="z"), 8 * len(z_stream)))
    return original_latent(hyperprior, y_stream, z_stream, z_table, latents, z_shape, y_size, what)


audit.stream_rates, audit._audit_latent = keep_tables, keep_symbols
audit.stream_rates_of(Path(sys.argv[1]))
totals = defaultdict(lambda: np.zeros(5))
for what, table, symbols, coded in captured["z"]:
    channel = torch.arange(symbols.shape[1]).view(1, -1, 1, 1).expand_as(symbols).reshape(-1).numpy()
    p = table.probabilities[channel, symbols.reshape(-1).numpy()]
    totals[what] += [coded, -np.log2(p).sum(), -np.log2(np.maximum(p, FLOOR)).sum(), (p < FLOOR).sum(), p.size]
for what, (coded, ideal, floored, rare, count) in totals.items():
    print(f"{what} z: coded {coded:.0f} bits, information content {ideal:.0f}, floored at 2^-24 {floored:.0f}; "
          f"{rare:.0f} of {count:.0f} symbols below 2^-24")
