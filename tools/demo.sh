#!/usr/bin/env bash
# The main job end to end on built-in data (scikit-learn's digits), a few minutes on 2 cores:
# train a baseline and a noise-injection-trained LeNet-5, export both to ONNX, evaluate both
# under the Hardening-DNNs noise model on one sweep; then a shipped LeNet-5 on PCM chips from one
# second to one year after programming, with and without drift compensation.
set -euo pipefail
out=${1:-demo-out}
cli=.venv/bin/analog-onnx
mkdir -p "$out"

# The recipe of the shipped example models (tools/make_example_models.py): AdamW at 2e-3 with
# batches of 32. (SGD at its default lr 0.1 leaves the noise-trained LeNet-5 at chance.)
recipe=(--data digits --epochs 30 --batch-size 32 --optimizer adam --lr 2e-3 --seed 0 --device cpu --no-progress)

echo "== 1/4 training a baseline and a noise-trained (NIT, sigma 0.5) LeNet-5 on digits"
"$cli" train --arch lenet5 --method baseline "${recipe[@]}" --out "$out/baseline" --force
"$cli" train --arch lenet5 --method nit --preset hardening-additive --noise-scale 0.5 "${recipe[@]}" \
    --out "$out/nit" --force

echo "== 2/4 transforming the baseline for inspection (the evaluator transforms in memory itself)"
"$cli" transform "$out/baseline/model.onnx" -o "$out/baseline.analog.onnx" -p hardening-additive --force
"$cli" inspect "$out/baseline.analog.onnx"

echo "== 3/4 Monte Carlo accuracy of both models under additive noise"
"$cli" evaluate "$out/baseline/model.onnx" "$out/nit/model.onnx" --data digits -p hardening-additive \
    --noise-scales log:0.05:5:13 --repeats 5 --seed 0 --out "$out/report" --force

echo "== 4/4 a shipped LeNet-5 on 5 PCM chips (aihwkit-pcm) from 1 s to 1 year after programming"
"$cli" evaluate models/digits-lenet5-baseline.onnx --data digits -p aihwkit-pcm --noise-scales 1 \
    --chips 5 --reads 2 --t-inference 1,60,3600,86400,2592000,31536000 --drift-compensation both --seed 0 \
    --out "$out/drift" --force

echo
echo "Report: $out/report/report.json, table $out/report/results.csv, plot $out/report/accuracy_vs_noise.png"
echo "Drift: $out/drift/report.json, plot $out/drift/accuracy_vs_time.png"
