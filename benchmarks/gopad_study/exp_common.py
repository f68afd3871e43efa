"""Coded RD cost of one GoP's P-frames vs adapter passes / lr (gop-adapters schedule study)."""
import sys, time, math, json, torch
torch.set_num_threads(1)
from workers.model_store import resolve_model
from workers.video_io import read_video, SourceFrames
from workers.codec.ssf import pad_frame
from workers.adapt.adapters import with_adapters
from workers.adapt.training import train_gop_adapters
from workers.rd_loss import lambda_for_quality
from workers.methods import parse_method_config
video_name, q, gop, lr, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
opts = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
warm = int(opts.pop('warmup', 0)); decay = opts.pop('decay', 'none')
paths = {'carphone': 'carphone_176x144_120f.mp4', 'foreman': 'foreman_352x288_10f.y4m', 'mobile': 'mobile_352x288_30f.y4m'}
loaded = resolve_model(None, q); lmbda = loaded.metadata.lmbda or lambda_for_quality(q)
video = read_video('/work/shared/data/eval-dev/' + paths[video_name])
frames = SourceFrames(video, lambda f: pad_frame(f.unsqueeze(0)))
base = loaded.model.eval()
tables = base.entropy_tables()
start, end = 12 * gop, min(12 * gop + 12, len(video))
gf = [frames[i] for i in range(start, end)]
h, w = video.height, video.width
intra_hat, _ = base.encode_intra(gf[0], tables)
def coded(model):
    ref, cost, bits, sq = intra_hat, 0.0, 0, 0.0
    for x in gf[1:]:
        ref, m, r = model.encode_inter(x, ref, tables)
        b = 8 * sum(len(s) for s in (m.y_stream, m.z_stream, r.y_stream, r.z_stream))
        mse = float(torch.mean((x[..., :h, :w] - ref[..., :h, :w]) ** 2))
        cost += lmbda * 255**2 * mse + b / (h * w); bits += b; sq += mse
    return cost, bits, sq / (len(gf) - 1)
cfg = parse_method_config('gop-adapters', {'learning_rate': lr, **opts})
adapted, params = with_adapters(base, cfg)
opt = torch.optim.Adam(params, lr=lr)
c0 = coded(base)
