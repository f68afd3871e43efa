"""I-frame adapters (gop-adapters ``intra_steps``): the coded RD cost of one GoP's I-frame after each Adam step,
against the base encoder's, as the method measures it (workers/methods/_gop_encoder.py ``coded_intra_cost``).

    PYTHONPATH=$PWD python benchmarks/gopad_study/intra.py VIDEO Q GOP LR STEPS

VIDEO: carphone, foreman, mobile or calendar (eval-dev), or a video's path; prints every step and the best.
"""

import sys
import time

import torch

from benchmarks.gopad_study.exp_common import CLIPS
from workers.adapt.adapters import with_intra_adapters
from workers.codec.ssf import pad_frame
from workers.methods import parse_method_config
from workers.methods._gop_encoder import coded_intra_cost
from workers.model_store import resolve_model
from workers.rd_loss import lambda_for_quality, rate_distortion
from workers.video_io import read_video

torch.set_num_threads(1)
name, q, gop, lr, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
loaded = resolve_model(None, q)
lmbda = loaded.metadata.lmbda or lambda_for_quality(q)
clips = dict(CLIPS, calendar='calendar_720x576_41f_png')
video = read_video('/work/shared/data/eval-dev/' + clips[name] if name in clips else name, max_frames=12 * gop + 1)
x = pad_frame(video.frame_rgb(12 * gop).unsqueeze(0))
picture = (video.height, video.width)
base = loaded.model.eval()
tables = base.entropy_tables()
c0 = coded_intra_cost(base, tables, x, picture, lmbda)
print('base', c0, flush=True)
adapted, parameters = with_intra_adapters(base, parse_method_config('gop-adapters', {}))
adapted.eval()
optimizer = torch.optim.Adam(parameters, lr=lr)
best, began = (c0['cost'], 0), time.perf_counter()
for step in range(1, steps + 1):
    x_hat, likelihoods = adapted.forward_intra(x)
    terms = rate_distortion([x[..., :picture[0], :picture[1]]], [x_hat[..., :picture[0], :picture[1]]], [likelihoods],
                            lmbda)
    optimizer.zero_grad()
    terms['loss'].backward()
    optimizer.step()
    c = coded_intra_cost(adapted, tables, x, picture, lmbda)
    best = min(best, (c['cost'], step))
    print(f"step {step} loss {float(terms['loss'].detach()):.5f} coded {c['cost']:.5f} "
          f"({100 * (c['cost'] / c0['cost'] - 1):+.2f}%) bits {c['bits']} s {time.perf_counter() - began:.0f}",
          flush=True)
print(f"BEST {name} q{q} gop{gop} lr{lr}: {100 * (best[0] / c0['cost'] - 1):+.2f}% at {best[1]}")
