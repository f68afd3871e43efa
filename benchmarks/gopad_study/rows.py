"""Markdown rows for RESULTS.md (gopad): per unit decision, GoPs adapted, bpp, PSNR, RD cost vs none, P-frame
rate estimated vs coded, seconds; BD-rate per video and mean from the harness's summary.json."""
import json, sys
from pathlib import Path
from workers.rate_audit import ANS_STREAM_BITS, stream_rates_of
work, none = Path(sys.argv[1]), Path(sys.argv[2])
summary = json.loads((work / 'summary.json').read_text())
print('| video | q | decision | GoPs adapted | bpp none | PSNR none | bpp | PSNR | RD cost vs none | P-frame bits est. (+32/stream) / coded | s (none) | s (gop-adapters) |')
print('|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
bds = []
for video, entry in summary['videos'].items():
    for u in entry['units']:
        d = work / f"{video}-q{u['quality']}"
        r = json.loads((d / 'result.json').read_text()); b = json.loads((none / f"{video}-q{u['quality']}" / 'result.json').read_text())
        log = [json.loads(l) for l in (d / 'adapt.log').read_text().splitlines() if l.startswith('{')]
        ch = [c for c in log if c.get('phase') == 'gop-adapters-choice']
        kept = sum(c['kept_pass'] > 0 for c in ch)
        rows, _ = stream_rates_of(d)
        p = [x for x in rows if x.latent != 'intra']
        est = sum(x.estimated + ANS_STREAM_BITS for x in p); coded = sum(x.coded for x in p)
        print(f"| {video} | {u['quality']} | {u['decision']} | {kept}/{len(ch)} | {u['bpp_none']:.5f} | {u['psnr_none']:.3f} | {u['bpp']:.5f} | {u['psnr']:.3f} | {100*u['rd_cost_change']:+.2f}% | {est:.0f} / {coded} ({100*(coded/est-1):+.2f}%) | {b['adapt_seconds']:.0f} | {r['adapt_seconds']:.0f} |")
    bds.append(entry['bd_rate'])
print()
print('| video | BD-rate vs none (PSNR-RGB, all frames) |'); print('|---|---:|')
for video, entry in summary['videos'].items():
    print(f"| {video} | {entry['bd_rate']:+.2f}% |" if entry['bd_rate'] is not None else f"| {video} | n/a |")
print(f"| mean of {len(bds)} | {sum(bds)/len(bds):+.2f}% |")
