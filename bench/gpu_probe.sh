#!/usr/bin/env bash
# One device call (`run` on a lent GPU machine; never in CI): the GPU numbers of the performance and transfer issues.
#   1. transfer at GPU-profile size: pretrain gpt and bert with profiles/gpu.yaml's pretrain sizes
#      (bench/pretrain_probe.py, bf16), then each checkpoint and its scratch twin fine-tuned on emotion, sst2 and
#      conll2003 (six fine-tunes side by side: small models leave the GPU mostly idle);
#   2. bench/gpu.py: GPT-2 small MFU (transformers vs bench/lean_gpt.py) and the pipeline's own Trainer set-up.
# Inputs: a built data/ (corpus, tokenizers, prepared/<task>) in $HT_PROBE_DATA (default .gpu/data), and wheels of
# the packages the device image lacks in .whl/ (datasets, pydantic, ...; bench/README.md "GPU path").
# Writes $OUT/gpu_transfer.json, $OUT/gpu.json and $OUT/probe.log. HT_PROBE_MFU_FIRST=1 measures MFU before the
# transfer runs (the GPU to itself either way); HT_GPU_ONLY (bench/gpu.py) picks some of its measurements.
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
mfu() {  # 2. MFU (the GPU to itself): the pipeline's Trainer set-up reads data/tokenizers and data/corpus
  cp -r "$DATA/tokenizers" "$DATA/corpus" data/
  python3 -m bench.run_all --only gpu 2>&1 | tail -n 20
  cp bench/results/gpu.json "$OUT/"
  echo "MFU: $((SECONDS - start)) s"
}
start=$SECONDS
[ -z "${HT_PROBE_MFU_FIRST:-}" ] || [ -n "${HT_PROBE_SKIP_MFU:-}" ] || mfu
# Pretraining runs, one per line: NAME FAMILY WHICH [ARGS...]. WHICH: "both" fine-tunes the checkpoint and its
# scratch twin, "pretrained" the checkpoint only (a run of the same architecture already fine-tunes the twin).
RUNS=${HT_PROBE_RUNS:-"gpu_gpt gpt both
gpu_bert bert both --negatives swapped --split-single --group-by-length"}
while read -r name family which args; do
  [ -n "$name" ] || continue
  probe pretrain "$name" --family "$family" --profile gpu --eval-every 1000 $args $PRETRAIN_ARGS \
    >"$WORK/logs/pretrain_$name.log" 2>&1 &
done <<<"$RUNS"
wait
echo "pretraining: $((SECONDS - start)) s"
while read -r name family which args; do
  [ -n "$name" ] || continue
  which_arg=$([ "$which" = both ] && echo "pretrained scratch" || echo "$which")
  for task in $TASKS; do
    for lr in $LRS; do
      lr_arg=$([ "$lr" = default ] || echo "--lr $lr")
      probe finetune "$name" --task "$task" --own-file --which $which_arg $lr_arg $FT_ARGS \
        >"$WORK/logs/ft_${name}_${task}_$lr.log" 2>&1 &
    done
  done
done <<<"$RUNS"
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
[ -n "${HT_PROBE_SKIP_MFU:-}" ] || [ -n "${HT_PROBE_MFU_FIRST:-}" ] || mfu
echo "total: $((SECONDS - start)) s"
