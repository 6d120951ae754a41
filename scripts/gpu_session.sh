#!/usr/bin/env bash
# One device call for a session lent a GPU: train the production default tokenizer there, then measure the
# encoder and the encode pipeline on it. Everything it makes goes to $OUT (weights, logs, benchmark table).
#
# Prepare here (docs/model.md, "Retraining on a GPU"): the train videos in .gpudata/, the wheels the GPU image
# lacks in .whl/ and the training photos in .gpuphotos/, all ignored by git and named in `carry`. Then one call:
#   run(command="bash scripts/gpu_session.sh", carry=[".gpudata", ".whl", ".gpuphotos"], timeout_s=600)
# and evaluate the weights it brings back here (the eval videos stay here): scripts/eval_tokenizer.py --model ...
#
# Knobs (environment): DATA (train videos, default .gpudata), PHOTOS (still photos, default .gpuphotos: used when
# the folder exists), MINUTES (training wall clock, default 6), RUN (the
# training run's folder, default /tmp/lfqtok-gpu-run: a second call resumes it),
# DEVICE (default cuda), WHEELS (default .whl), PYTHON (default python3), TINY=1 (the tiny test config: the CPU smoke test in tests/test_scripts.py).
set -uo pipefail
: "${OUT:?set OUT to the folder that receives the results}"
DATA=${DATA:-.gpudata}
PHOTOS=${PHOTOS:-.gpuphotos}
RUN=${RUN:-/tmp/lfqtok-gpu-run}
MINUTES=${MINUTES:-6}
DEVICE=${DEVICE:-cuda}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

if [ -d "$WHEELS" ]; then  # av, webdataset, braceexpand: not in the GPU image, nothing can be fetched there
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/machine.txt"

if [ "${TINY:-0}" = 1 ]; then
    model_args=(--tiny --batch-size 2 --clip-frames 5 --crop 32)
    bench_args=(--size 32 --clip-frames 5 --max-clips 1 --batch-size 2 --encoder-batches 1 --workers 1)
else
    # the v2 network (docs/model.md) grown from the shipped default, so the GPU minutes start from what the CPU
    # phases learned: deeper encoder, asymmetric decoder with a bilinear base, a 4-bit chroma head, YCbCr loss
    # with chroma x2 and block means, weight average
    model_args=(--init-from default --batch-size 32 --clip-frames 17 --crop 64 --mse-weight 4 --num-res-blocks 2 --decoder-res-blocks 3
                --decoder-base --chroma-bits 4 --chroma-weight 2 --lowpass-weight 4 --ema-decay 0.999)
    bench_args=(--size 128 --clip-frames 17 --max-clips 4 --batch-size 32 --encoder-batches 8)
fi

# 1. train: the LR schedule ends at MINUTES of wall clock whatever the step rate; the export is a plain checkpoint
photo_args=()
[ -d "$PHOTOS" ] && photo_args=(--photos "$PHOTOS" --photo-fraction 0.4)
"$PY" scripts/train_tokenizer.py "$DATA" --out "$RUN" --device "$DEVICE" "${model_args[@]}" "${photo_args[@]}" \
    --steps 1000000 --max-minutes "$MINUTES" --checkpoint-every 1000 --log-every 200 --name lfqtok-default \
    --export "$OUT/default.safetensors" 2>&1 | tee "$OUT/train.log" || exit 1

# 2. measure: naive per-clip loop, decode ceiling, encoder ceiling (the >= 1,500 frames/s target), end to end
"$PY" scripts/bench_encode.py "$DATA" --model "$OUT/default.safetensors" --device "$DEVICE" "${bench_args[@]}" \
    2>&1 | tee "$OUT/bench_encode.txt" || exit 1
