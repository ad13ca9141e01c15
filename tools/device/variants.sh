# $1: executor; runs from the repository root; CLI at $CLI
M=packages/model-tiny/model
P="The state of the union is strong, and our economy"
for v in "--selection-policy dense" "--selection-policy quest --dense-layers 0 --token-budget 16 --page-size 4" "--selection-policy quest --dense-layers 0 --token-budget 16 --page-size 4 --use-fused-kernel false" "--selection-policy streaming --dense-layers 0 --token-budget 16 --page-size 4" "--selection-policy dense --kv-cache-dtype int8" "--selection-policy quest --dense-layers 0 --token-budget 16 --page-size 4 --kv-cache-dtype fp32" "--selection-policy quest --dense-layers 0 --token-budget 16 --page-size 4 --kv-cache-dtype int8" "--selection-policy quest --dense-layers 0 --token-budget 16 --page-size 4 --kv-cache-dtype int8 --use-fused-kernel false" "--selection-policy oracle --dense-layers 0 --token-budget 16 --page-size 4 --kv-cache-dtype int8"; do
  echo "== $v"
  node $CLI generate --model $M --prompt "$P" --max-tokens 40 --temperature 0 --executor $1 --json $v 2>&1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['token_ids']); print(repr(d['text']))"
done
