#!/usr/bin/env bash
# Prepare, on this machine, the one device call of a session that is lent a GPU (see run.sh beside it).
#
#   bash benchmarks/device/prepare.sh PAIR_CACHE
#
# Fills .gpu/ (ignored through .git/info/exclude) with what the GPU machine lacks: PyAV as a tar.xz of its
# unzipped cp312 wheel (23.5 MiB; the wheel is 34 MiB), pydantic, constriction, scikit-video and
# pytorch-msssim wheels (5.5 MiB), and the post-filter's training pack (workers/postfilter/pack.py, 30.6 MiB
# at the default crop): 61 MiB with the checkout, measured 2026-11-30. The device call sends the checkout and .gpu/ together, 64 MiB at most, and the
# checkout holds 29 MB of SSF weights that neither job needs: send it from a temporary branch without them,
#   git switch -c device-tmp && git rm -q workers/models/ssf-compact/*.safetensors && git commit -qm tmp
# and afterwards `git switch main && git branch -D device-tmp`. The last line printed is the size that travels.
set -euo pipefail
cache=${1:?usage: prepare.sh PAIR_CACHE}
python=${PYTHON:-.venv/bin/python}
mkdir -p .git/info .gpu/wheels
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
platforms=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
if [ ! -f .gpu/av.tar.xz ]; then
  tmp=$(mktemp -d)
  "$python" -m pip download -q --no-deps "${platforms[@]}" -d "$tmp" "av==$(version av)"
  (cd "$tmp" && mkdir site && cd site && unzip -q ../av-*.whl && tar cf - . | xz -9 -T2 > "$OLDPWD/.gpu/av.tar.xz")
  rm -rf "$tmp"
fi
for package in pydantic pydantic-core annotated-types typing-inspection typing-extensions constriction scikit-video \
               pytorch-msssim; do
  "$python" -m pip download -q --no-deps "${platforms[@]}" -d .gpu/wheels "$package==$(version "$package")"
done
# a pack of another format (an older adaptjobs) is rebuilt: the trainer refuses it
pack_current() { "$python" -c "import json, sys; from workers.postfilter.i420 import PACK_FORMAT
sys.exit(json.load(open('.gpu/pack/pack.json')).get('format') != PACK_FORMAT)" 2>/dev/null; }
pack_current || { rm -rf .gpu/pack && "$python" -m workers.postfilter.pack --cache "$cache" --out .gpu/pack; }
# what travels from the temporary branch: the checkout without the SSF weights, untracked files, .gpu/
tracked=$(git ls-files -z | grep -zv '^workers/models/ssf-compact/.*\.safetensors$' | xargs -0 du -cb | tail -1 | cut -f1)
extra=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb | tail -1 | cut -f1)
carried=$(du -sb .gpu | cut -f1)
total=$(( tracked + ${extra:-0} + carried ))
echo "travels: $(( total / 1048576 )) MiB of 64 (checkout without SSF weights $(( tracked / 1048576 )), .gpu $(( carried / 1048576 )))"
[ "$total" -lt $(( 63 * 1048576 )) ] || { echo "too big: build the pack with a smaller --crop"; exit 1; }
