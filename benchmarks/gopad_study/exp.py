"""Coded RD cost of one GoP's P-frames vs adapter passes / lr (gop-adapters schedule study).

    exp.py VIDEO Q GOP LR PASSES EVAL_PASSES [JSON options]   (README.md)"""
import math
import sys
import time

from benchmarks.gopad_study.exp_common import study_setup
from workers.adapt.training import train_gop_adapters

video_name, q, gop, lr, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
evals = [int(e) for e in sys.argv[6].split(',')]
s = study_setup(video_name, q, gop, lr, sys.argv[7] if len(sys.argv) > 7 else None)
print('base', s.c0, flush=True)
losses, trl = [], []
t0 = time.perf_counter()
for p in range(passes):
    if p < s.warm:
        rate = lr * (p + 1) / (s.warm + 1)
    elif s.decay == 'cos':
        rate = 0.05 * lr + 0.95 * lr * 0.5 * (1 + math.cos(math.pi * (p - s.warm) / max(passes - s.warm - 1, 1)))
    else:
        rate = lr
    for g in s.opt.param_groups:
        g['lr'] = rate
    train_gop_adapters(s.adapted, s.params, s.opt, s.gf, s.intra_hat, (s.h, s.w), s.cfg.model_copy(update={'steps': p + 1}),
                       s.lmbda, p, lambda step: None, lambda r: losses.append(r['loss']), gop)
    trl.append(sum(losses) / max(len(losses), 1))
    losses.clear()
    if p + 1 in evals:
        el = time.perf_counter() - t0
        c = s.coded(s.adapted)
        print(f'pass {p+1} lr {rate:.2e} cost {c[0]:.5f} ({100*(c[0]/s.c0[0]-1):+.2f}%) bits {c[1]} mse {c[2]:.6f} '
              f'train_s {el:.1f} trainloss {trl[0]:.5f}->{trl[-1]:.5f}', flush=True)
        t0 = time.perf_counter()
