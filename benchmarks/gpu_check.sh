#!/usr/bin/env bash
# What to run the day a machine with GPUs is there (under 5 minutes): the M4 acceptance on CUDA
# devices (training on cuda:0, the evaluation worker on cuda:1 where there are two) and the
# data-parallel costs on nccl (the Ranks loop and the trainer itself). Prints the figures; exits non-zero if a step fails.
#   bash benchmarks/gpu_check.sh        (from the repository root, with the venv installed)
set -u
py=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=index,name,memory.total --format=csv || { echo "no nvidia-smi: no GPU here"; exit 1; }
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices', torch.cuda.device_count())"
status=0
"$py" -m acc.test_m4 || status=$?   # data parallel on cuda:0 + cuda:1 (nccl) where there are two GPUs
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  "$py" benchmarks/bench_ddp.py --backend nccl --ranks 2 --batch 256 || status=$?
else
  echo "bench_ddp on nccl needs 2 GPUs; found $gpus: gloo on the CPU instead"
  "$py" benchmarks/bench_ddp.py || status=$?
fi
"$py" benchmarks/bench_factoring.py --device cuda --eval-device "cuda:$((gpus > 1 ? 1 : 0))" --rounds 3 || status=$?
exit $status
