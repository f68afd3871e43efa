"""Shared by the gop-adapters study scripts: one GoP of an eval-dev clip, the shipped base model, adapters
ready to train, and the coded RD cost of the GoP's P-frames (see README.md)."""

import json
from types import SimpleNamespace

import torch

from workers.adapt.adapters import with_adapters
from workers.codec.ssf import pad_frame
from workers.methods._gop_encoder import coded_gop_cost
from workers.methods import parse_method_config
from workers.model_store import resolve_model
from workers.rd_loss import lambda_for_quality
from workers.video_io import SourceFrames, read_video

CLIPS = {'carphone': 'carphone_176x144_120f.mp4', 'foreman': 'foreman_352x288_10f.y4m',
         'mobile': 'mobile_352x288_30f.y4m'}


def study_setup(video_name: str, q: int, gop: int, lr: float, options_json: str | None) -> SimpleNamespace:
    """The GoP's padded frames ``gf`` (1, 3, H16, W16), the coded I-frame ``intra_hat``, base model ``base``
    and its ``tables``, the adapted model ``adapted`` with its trainable ``params`` and Adam ``opt``, the
    method config ``cfg``, picture size ``h``, ``w``, ``lmbda``, schedule options ``warm``/``decay``, the
    function ``coded(model) -> (cost, bits, mean mse)`` and the base encoder's ``c0 = coded(base)``."""
    torch.set_num_threads(1)
    opts = json.loads(options_json) if options_json else {}
    warm, decay = int(opts.pop('warmup', 0)), opts.pop('decay', 'none')
    loaded = resolve_model(None, q)
    lmbda = loaded.metadata.lmbda or lambda_for_quality(q)
    video = read_video('/work/shared/data/eval-dev/' + CLIPS[video_name])
    frames = SourceFrames(video, lambda f: pad_frame(f.unsqueeze(0)))
    base = loaded.model.eval()
    tables = base.entropy_tables()
    gf = [frames[i] for i in range(12 * gop, min(12 * gop + 12, len(video)))]
    h, w = video.height, video.width
    intra_hat, _ = base.encode_intra(gf[0], tables)

    def coded(model):  # the same measure gop-adapters' per-GoP choice uses
        terms = coded_gop_cost(model, tables, intra_hat, gf[1:], (h, w), lmbda)
        return terms["cost"], terms["bits"], terms["mse"]

    cfg = parse_method_config('gop-adapters', {'learning_rate': lr, **opts})
    adapted, params = with_adapters(base, cfg)
    return SimpleNamespace(gf=gf, intra_hat=intra_hat, base=base, tables=tables, adapted=adapted, params=params,
                           opt=torch.optim.Adam(params, lr=lr), cfg=cfg, h=h, w=w, lmbda=lmbda, warm=warm,
                           decay=decay, coded=coded, c0=coded(base))
