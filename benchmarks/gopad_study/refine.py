"""Upper bound for encoder-side methods: per-frame latent refinement (y_motion, y_residual optimised by STE on
lambda*D + R, greedy frame by frame, best of checkpoints by the CODED cost) on one GoP's P-frames."""
import sys, time, copy, json, torch
torch.set_num_threads(1)
from workers.model_store import resolve_model
from workers.video_io import read_video, SourceFrames
from workers.codec.ssf import pad_frame
from workers.rd_loss import lambda_for_quality, likelihood_bits
video_name, q, gop, lr, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
every = int(sys.argv[6]) if len(sys.argv) > 6 else 5
paths = {'carphone': 'carphone_176x144_120f.mp4', 'foreman': 'foreman_352x288_10f.y4m', 'mobile': 'mobile_352x288_30f.y4m'}
loaded = resolve_model(None, q); lmbda = loaded.metadata.lmbda or lambda_for_quality(q)
video = read_video('/work/shared/data/eval-dev/' + paths[video_name])
frames = SourceFrames(video, lambda f: pad_frame(f.unsqueeze(0)))
base = loaded.model.eval()
for p in base.parameters(): p.requires_grad_(False)
tables = base.entropy_tables()
train = copy.deepcopy(base)
train.motion_hyperprior.match_coder(tables.motion); train.res_hyperprior.match_coder(tables.residual)
h, w = video.height, video.width; px = h * w
start, end = 12 * gop, min(12 * gop + 12, len(video))
gf = [frames[i] for i in range(start, end)]
ref, _ = base.encode_intra(gf[0], tables)
def coded(x, ref, ym, yr):
    with torch.no_grad():
        m = base.motion_hyperprior.compress(ym, tables.motion, tables.latents)
        pred = base.predict(ref, m.y_hat)
        r = base.res_hyperprior.compress(yr, tables.residual, tables.latents)
        xh = base.reconstruct_inter(pred, r.y_hat, m.y_hat).clamp(0, 1)
        b = 8 * sum(len(s) for s in (m.y_stream, m.z_stream, r.y_stream, r.z_stream))
        mse = float(torch.mean((x[..., :h, :w] - xh[..., :h, :w]) ** 2))
        return lmbda * 255**2 * mse + b / px, xh, b
tot0 = tot = 0.0; t0 = time.perf_counter()
for i, x in enumerate(gf[1:]):
    with torch.no_grad():
        ym0 = base.motion_encoder(torch.cat((x, ref), 1))
        yr0 = base.res_encoder(x - base.predict(ref, base.motion_hyperprior.compress(ym0, tables.motion, tables.latents).y_hat))
    c0, xh0, b0 = coded(x, ref, ym0, yr0)
    # base chain reference for the fair base total: computed separately below
    ym, yr = ym0.clone().requires_grad_(True), yr0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ym, yr], lr=lr)
    best = (c0, xh0, 0)
    for it in range(1, iters + 1):
        ymh, lm = train.motion_hyperprior(ym)
        pred = train.predict(ref, ymh)
        yrh, lr_ = train.res_hyperprior(yr)
        xh = train.reconstruct_inter(pred, yrh, ymh)
        loss = lmbda * 255**2 * torch.mean((x[..., :h, :w] - xh[..., :h, :w]) ** 2) + likelihood_bits([lm, lr_]) / px
        if it == 1: l1 = float(loss)
        opt.zero_grad(); loss.backward(); opt.step()
        if it % every == 0:
            c, xh_c, b = coded(x, ref, ym.detach(), yr.detach())
            if c < best[0]: best = (c, xh_c, it)
    print(f'frame {i+1}: base-encoder cost {c0:.5f} refined {best[0]:.5f} ({100*(best[0]/c0-1):+.2f}%) at iter {best[2]} loss {l1:.5f}->{float(loss):.5f}', flush=True)
    tot0 += c0; tot += best[0]; ref = best[1]
print(f'GoP {gop}: per-frame base costs {tot0:.5f}, refined {tot:.5f} ({100*(tot/tot0-1):+.2f}%) seconds {time.perf_counter()-t0:.0f}')
