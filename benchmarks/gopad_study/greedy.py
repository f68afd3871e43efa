"""Per-frame greedy choice among {base encoder, adapters after each pass}: coded cost of one GoP."""
import sys, time, math, json, torch
torch.set_num_threads(1)
exec(open('' + __import__('os').path.dirname(__file__) + '/exp_common.py').read())
states = []
t0 = time.perf_counter()
for p in range(passes):
    train_gop_adapters(adapted, params, opt, gf, intra_hat, (h, w), cfg.model_copy(update={'steps': p + 1}), lmbda, p, lambda s: None, None, gop)
    states.append([q_.detach().clone() for q_ in params])
ttrain = time.perf_counter() - t0
def load(s):
    with torch.no_grad():
        for q_, v in zip(params, s): q_.copy_(v)
best_gop = min((coded_with(s)[0], i) for i, s in enumerate(states)) if 'coded_with' in dir() else None
t0 = time.perf_counter()
ref, total, picks = intra_hat, 0.0, []
for x in gf[1:]:
    options = []
    for i, s in enumerate([None] + states):
        if s is None: enc = base
        else: load(s); enc = adapted
        with torch.no_grad():
            xh, m, r = enc.encode_inter(x, ref.clone(), tables)
        b = 8 * sum(len(st) for st in (m.y_stream, m.z_stream, r.y_stream, r.z_stream))
        c = lmbda * 255**2 * float(torch.mean((x[..., :h, :w] - xh[..., :h, :w]) ** 2)) + b / (h * w)
        options.append((c, i, xh))
    c, i, xh = min(options, key=lambda o: (o[0], o[1]))
    total += c; picks.append(i); ref = xh
print(f'{video_name} q{q} gop {gop} lr {lr} passes {passes}: base {c0[0]:.5f} greedy-per-frame {total:.5f} ({100*(total/c0[0]-1):+.2f}%) picks {picks} train_s {ttrain:.0f} select_s {time.perf_counter()-t0:.0f}', flush=True)
