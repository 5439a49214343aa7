# The GPU check behind bench/README.md "After the per-step changes": run from the repo root with the
# Fashion-MNIST IDX files in .data/fashion-mnist (copied there; nothing downloads). Writes into $OUT if set.
OUT=${OUT:-/tmp}
export PYTHONUNBUFFERED=1 D=.data/fashion-mnist
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch,accelerate;print(torch.__version__, accelerate.__version__)"
mkdir -p /tmp/r
echo "== fp16 + fused AdamW smoke"; python3 train_accel.py --config configs/train/debug.yaml data.dir=$D train.mixed_precision=fp16 train.device=cuda run.dir=/tmp/r/fp16 train.progress=false 2>&1 | tail -2
echo "== throughput"; python3 bench/throughput.py --config configs/train/fast_fashion_gpu.yaml --steps 200 data.dir=$D 2>&1 | tail -3
echo "== throughput compile"; timeout 150 python3 bench/throughput.py --config configs/train/fast_fashion_gpu.yaml --steps 200 data.dir=$D model.compile=true 2>&1 | tail -3
echo "== tta"; python3 bench/run.py --suites tta --recipes fast_fashion_gpu:3 --targets 0.9,0.92 --data-dir $D --out /tmp/r --tag v2 2>&1 | tail -12
cp /tmp/r/v2.json $OUT/ 2>/dev/null; ls /tmp/r
