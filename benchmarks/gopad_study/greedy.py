"""Per-frame greedy choice among {base encoder, adapters after each pass}: coded cost of one GoP.

    greedy.py VIDEO Q GOP LR PASSES [JSON options]   (README.md)"""
import sys
import time

import torch

from benchmarks.gopad_study.exp_common import study_setup
from workers.adapt.training import train_gop_adapters

video_name, q, gop, lr, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = study_setup(video_name, q, gop, lr, sys.argv[6] if len(sys.argv) > 6 else None)
h, w = s.h, s.w
states = []
t0 = time.perf_counter()
for p in range(passes):
    train_gop_adapters(s.adapted, s.params, s.opt, s.gf, s.intra_hat, (h, w), s.cfg.model_copy(update={'steps': p + 1}),
                       s.lmbda, p, lambda step: None, None, gop)
    states.append([t.detach().clone() for t in s.params])
ttrain = time.perf_counter() - t0


def load(state):
    with torch.no_grad():
        for t, v in zip(s.params, state):
            t.copy_(v)


t0 = time.perf_counter()
ref, total, picks = s.intra_hat, 0.0, []
for x in s.gf[1:]:
    options = []
    for i, state in enumerate([None] + states):
        if state is None:
            enc = s.base
        else:
            load(state)
            enc = s.adapted
        with torch.no_grad():
            xh, m, r = enc.encode_inter(x, ref.clone(), s.tables)
        b = 8 * sum(len(st) for st in (m.y_stream, m.z_stream, r.y_stream, r.z_stream))
        c = s.lmbda * 255**2 * float(torch.mean((x[..., :h, :w] - xh[..., :h, :w]) ** 2)) + b / (h * w)
        options.append((c, i, xh))
    c, i, xh = min(options, key=lambda o: (o[0], o[1]))
    total += c
    picks.append(i)
    ref = xh
print(f'{video_name} q{q} gop {gop} lr {lr} passes {passes}: base {s.c0[0]:.5f} greedy-per-frame {total:.5f} '
      f'({100*(total/s.c0[0]-1):+.2f}%) picks {picks} train_s {ttrain:.0f} select_s {time.perf_counter()-t0:.0f}', flush=True)
