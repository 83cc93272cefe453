#!/usr/bin/env bash
# One device call (`run` on a lent GPU machine; never in CI): the GPU numbers of the performance and transfer issues.
#   1. transfer at GPU-profile size: pretrain gpt and bert with profiles/gpu.yaml's pretrain sizes
#      (bench/pretrain_probe.py, bf16), then each checkpoint and its scratch twin fine-tuned on emotion, sst2 and
#      conll2003 (six fine-tunes side by side: small models leave the GPU mostly idle);
#   2. bench/gpu.py: GPT-2 small MFU (transformers vs bench/lean_gpt.py) and the pipeline's own Trainer set-up.
# Inputs: a built data/ (corpus, tokenizers, prepared/<task>) in $HT_PROBE_DATA (default .gpu/data), and wheels of
# the packages the device image lacks in .whl/ (datasets, pydantic, ...; bench/README.md "GPU path").
# Writes $OUT/gpu_transfer.json, $OUT/gpu.json and $OUT/probe.log.
set -u
OUT=${OUT:-/tmp/gpu_probe_out}
DATA=${HT_PROBE_DATA:-.gpu/data}
WORK=${HT_PROBE_WORK:-/tmp/gpu_probe}
TASKS=${HT_PROBE_TASKS:-emotion sst2 conll2003}
# fine-tuning learning rates: "default" = params.yaml's train settings of the family (tuned for the CPU-sized models)
LRS=${HT_PROBE_LRS:-default 0.0001}
# extra arguments (a quick local check: HT_PROBE_PRETRAIN_ARGS="--set max_steps=4" HT_PROBE_FT_ARGS="--epochs 1")
PRETRAIN_ARGS=${HT_PROBE_PRETRAIN_ARGS:-}
FT_ARGS=${HT_PROBE_FT_ARGS:-}
mkdir -p "$OUT" "$WORK/logs" data bench/results/pretrain_probe
if [ -z "${HT_PROBE_NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, datasets, pyarrow; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__,
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
probe() { python3 -m bench.pretrain_probe "$@" --data "$DATA" --work "$WORK"; }
start=$SECONDS
probe pretrain gpu_gpt --family gpt --profile gpu --eval-every 1000 $PRETRAIN_ARGS >"$WORK/logs/pretrain_gpt.log" 2>&1 &
probe pretrain gpu_bert --family bert --profile gpu --eval-every 1000 --negatives swapped --split-single \
  --group-by-length $PRETRAIN_ARGS >"$WORK/logs/pretrain_bert.log" 2>&1 &
wait
echo "pretraining: $((SECONDS - start)) s"
for family in gpt bert; do
  for task in $TASKS; do
    for lr in $LRS; do
      lr_arg=$([ "$lr" = default ] || echo "--lr $lr")
      probe finetune "gpu_$family" --task "$task" --own-file $lr_arg $FT_ARGS \
        >"$WORK/logs/ft_${family}_${task}_$lr.log" 2>&1 &
    done
  done
done
wait
echo "transfer: $((SECONDS - start)) s"
python3 - "$OUT/gpu_transfer.json" <<'PY'
import json, sys
from pathlib import Path
runs = [json.loads(p.read_text()) for p in sorted(Path("bench/results/pretrain_probe").glob("gpu_*.json"))]
Path(sys.argv[1]).write_text(json.dumps({"runs": runs}, indent=1) + "\n")
for run in runs:
    print(run["name"], (run.get("curve") or [{}])[-1], run.get("pretrain_wall_s"))
    for task, r in run.get("downstream", {}).items():
        print("  ", task, {w: v["test"] for w, v in r.items()})
PY
for f in "$WORK"/logs/*.log; do echo "== $f"; grep -v -E "^\s*$" "$f" | tail -n 15; done >"$OUT/probe.log"
[ -n "${HT_PROBE_SKIP_MFU:-}" ] && exit 0
# 2. MFU (the GPU to itself): the pipeline's Trainer set-up reads data/tokenizers and data/corpus
cp -r "$DATA/tokenizers" "$DATA/corpus" data/
python3 -m bench.run_all --only gpu 2>&1 | tail -n 20
cp bench/results/gpu.json "$OUT/"
echo "total: $((SECONDS - start)) s"
