"""Greedy tokens of a GGUF in llama.cpp's llama-server against `whittle generate` on the HF model.

usage: llamacpp_check.py --whittle BIN --model HF_DIR --gguf FILE --server LLAMA_SERVER
                         [--tokens N] [--prompt TEXT ...]

For each prompt, whittle generates N tokens greedily (--ignore-eos --no-chat --json); the same
prompt ids (BOS included, as whittle tokenized them) go to llama-server's POST /completion with
temperature 0 and top_k 1, so both sides decode from identical input and tokenization differences
cannot hide or fake a match. The check fails unless every prompt's N token ids are identical.

The server binds to 127.0.0.1 on a free port, is waited for a bounded time, and is always killed
(also on error or Ctrl-C). Its log goes to FILE.server.log. Exit status: 0 = all identical,
1 = a mismatch or an error (the message says which prompt, and where the ids diverge).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROMPTS = [
    "The capital of France is",
    "In 1905, Albert Einstein published",
    "def fibonacci(n):",
    "The three primary colors are",
]
START_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 300


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def whittle_generate(whittle, model, prompt, n):
    cmd = [whittle, "generate", model, "--prompt", prompt, "--max-new-tokens", str(n),
           "--ignore-eos", "--no-chat", "--json", "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S)
    if r.returncode != 0:
        sys.exit(f"llamacpp_check: `{' '.join(cmd)}` failed ({r.returncode}):\n{r.stderr}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    return out["prompt_ids"], out["tokens"], out["text"]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
        return json.loads(resp.read())


def wait_ready(port, proc, log_path):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"llamacpp_check: llama-server exited with {proc.returncode} while loading; "
                     f"see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    sys.exit(f"llamacpp_check: llama-server not ready after {START_TIMEOUT_S} s; see {log_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--whittle", required=True)
    ap.add_argument("--model", required=True, help="HF folder whittle generates from")
    ap.add_argument("--gguf", required=True, help="the same model converted by convert_hf_to_gguf")
    ap.add_argument("--server", required=True, help="llama-server binary")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", action="append", help="repeatable; default: four fixed prompts")
    args = ap.parse_args()
    prompts = args.prompt or PROMPTS

    want = [whittle_generate(args.whittle, args.model, p, args.tokens) for p in prompts]

    port = free_port()
    log_path = args.gguf + ".server.log"
    env = dict(os.environ)
    bindir = os.path.dirname(os.path.abspath(args.server))
    env["LD_LIBRARY_PATH"] = bindir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    cmd = [args.server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(args.threads), "--ctx-size", "512", "--parallel", "1",
           "--n-gpu-layers", "0", "--no-webui", "--no-warmup"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    failures = 0
    try:
        wait_ready(port, proc, log_path)
        for prompt, (ids, w_tokens, w_text) in zip(prompts, want):
            r = post(port, "/completion", {
                "prompt": ids, "n_predict": args.tokens, "temperature": 0, "top_k": 1,
                "ignore_eos": True, "cache_prompt": False, "return_tokens": True,
                "samplers": ["top_k"],
            })
            l_tokens = r.get("tokens")
            if l_tokens is None:
                sys.exit(f"llamacpp_check: llama-server returned no token ids: {r}")
            if l_tokens == w_tokens:
                print(f"ok  {prompt!r}: {len(w_tokens)} identical tokens {w_text!r}")
                continue
            failures += 1
            at = next((i for i, (a, b) in enumerate(zip(w_tokens, l_tokens)) if a != b),
                      min(len(w_tokens), len(l_tokens)))
            print(f"MISMATCH {prompt!r} at token {at}:\n  whittle   {w_tokens}\n  llama.cpp {l_tokens}"
                  f"\n  whittle text   {w_text!r}\n  llama.cpp text {r.get('content')!r}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    if failures:
        sys.exit(f"llamacpp_check: {failures} of {len(prompts)} prompts differ ({args.gguf})")
    print(f"llamacpp_check: {len(prompts)} prompts × {args.tokens} greedy tokens identical "
          f"in llama.cpp and whittle ({args.gguf})")


if __name__ == "__main__":
    main()
