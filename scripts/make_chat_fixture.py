#!/usr/bin/env python3
"""Chat-template references from transformers, for whittle's chat renderer (tests/chat.rs).

usage:
  make_chat_fixture.py [DIR]        (default tests/fixtures/chat)

Reads each template DIR/templates.json names (DIR/NAME.jinja, or its "file" relative to DIR) with
the special-token strings given there, and
renders each conversation below through transformers' own `render_jinja_template` (the function
behind `tokenizer.apply_chat_template(..., tokenize=False)`: jinja2's sandbox with trim_blocks and
lstrip_blocks, its `raise_exception`, `tojson` and `strftime_now`), with and without
`add_generation_prompt`. Writes DIR/reference.json: per template, conversation and flag either
the rendered text or the error message the template raised. Deterministic: no template here
calls `strftime_now` unless `date_string` is undefined, and every conversation passes one.

Regenerate with
    scripts/setup-python.sh --with-torch && .venv/bin/python scripts/make_chat_fixture.py
"""

from __future__ import annotations

import json
import os
import sys

# Conversations as a user's calibration file or `generate --chat` would give them: plain turns,
# a system message, whitespace the templates trim, list contents with text and image parts,
# non-ASCII text, and shapes some templates refuse (two user turns in a row, a leading
# assistant turn, a "tool" turn, content of the wrong type).
CONVERSATIONS = {
    "one-user-turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system-and-turns": [
        {"role": "system", "content": "Be brief. "},
        {"role": "user", "content": "  What is the capital of France?\n"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ],
    "non-ascii": [
        {"role": "user", "content": "Übersetze: «café» — 東京 🚀"},
        {"role": "assistant", "content": "  Café, Tokyo.  "},
    ],
    "text-parts": [
        {"role": "user", "content": [{"type": "text", "text": " Describe it. "},
                                     {"type": "text", "text": "Shortly."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A city."}]},
    ],
    "system-parts": [
        {"role": "system", "content": [{"type": "text", "text": "Read the scan."}]},
        {"role": "user", "content": "What does it say?"},
    ],
    "two-user-turns": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ],
    "assistant-first": [{"role": "assistant", "content": "Hello."}],
    "tool-turn": [
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "content": "sunny"},
    ],
    "number-content": [{"role": "user", "content": 3}],
}


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests",
                                                                  "fixtures", "chat")
    from transformers.utils.chat_template_utils import render_jinja_template
    import jinja2
    import transformers

    with open(os.path.join(folder, "templates.json"), encoding="utf-8") as f:
        templates = json.load(f)
    out = {"made_with": {"transformers": transformers.__version__, "jinja2": jinja2.__version__},
           "conversations": CONVERSATIONS, "renders": []}
    for name in sorted(templates):
        with open(os.path.join(folder, templates[name].get("file", name + ".jinja")), encoding="utf-8") as f:
            template = f.read()
        special = templates[name]["special_tokens"]
        extra = templates[name].get("variables", {})
        for conv_name, conv in CONVERSATIONS.items():
            for gen in (False, True):
                row = {"template": name, "conversation": conv_name, "add_generation_prompt": gen}
                try:
                    rendered = render_jinja_template(conversations=[conv], chat_template=template,
                                                     add_generation_prompt=gen, **special, **extra)
                    # (rendered texts, generation indices) in transformers 5
                    text = rendered[0] if isinstance(rendered, tuple) else rendered
                    row["text"] = text[0] if isinstance(text, list) else text
                except Exception as e:  # the template's raise_exception, or jinja2's own error
                    row["error"] = f"{type(e).__name__}: {e}"
                out["renders"].append(row)
    path = os.path.join(folder, "reference.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {path}: {len(out['renders'])} renders")


if __name__ == "__main__":
    main()
