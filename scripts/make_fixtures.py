#!/usr/bin/env python3
"""Build the committed test fixtures: tiny random-init Gemma-2 / Gemma-3 models made by
transformers, with reference activations computed by transformers fp32 eager.

usage: make_fixtures.py [OUTDIR]          (default: tests/fixtures)

Regenerate with
    scripts/setup-python.sh --with-torch && .venv/bin/python scripts/make_fixtures.py tests/fixtures

Writes, under OUTDIR:
  eval-text.txt                       plain English prose for the perplexity protocol
  tiny-gemma2/                        Gemma2ForCausalLM, F32 weights, softcaps 5.0 / 3.0
  tiny-gemma3/                        Gemma3ForCausalLM, BF16 weights, linear rope scaling on full layers
  tiny-gemma3-perturbed/              tiny-gemma3 with small noise on the MLP weights only
each with config.json + model.safetensors (as save_pretrained writes them), tokenizer.json +
tokenizer_config.json (a byte-level BPE trained here), and
  reference.safetensors               (tiny-gemma2, tiny-gemma3) input_ids and activations
  eval-reference.json                 hf_eval.py output on eval-text.txt, --seq 32 --windows 4
                                      (tiny-gemma3-perturbed: with --base tiny-gemma3)
See tests/fixtures/README.md for what each tensor is.

Deterministic: a fixed seed and fixed texts; rerunning with the same torch / transformers /
tokenizers versions reproduces the files byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch

import hfref

SEED = 20250101
VOCAB = 512
BATCH, SEQ = 2, 40
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0, 1, 2, 3
PAD, EOS, BOS, UNK = range(4)

# Perturbation scales (hidden 64): after these, attention is far from uniform, the gemma2
# attention softcap (5.0) saturates on a good share of scores, and the logits spread over
# several units. Checked and printed by main().
STD_LINEAR = 0.2
STD_EMBED = 0.3
STD_NORM = 0.3
STD_MLP_PERTURB = 0.02  # tiny-gemma3-perturbed: noise added to gate/up/down only


# ----------------------------------------------------------------------------- texts

# Training text for the fixture tokenizer (prose written for this project).
TOKENIZER_TEXT = """\
The river rises in a ring of low hills and runs for nearly two hundred miles before it reaches
the sea. For most of that distance it is slow and brown, and the towns along its banks were built
where the water could be crossed on foot in late summer. Bridges came later, first of timber and
then of stone, and each one moved the market a little further downstream.

A lighthouse keeper kept a log of every ship that passed the point. Most entries are short: the
name of the vessel, the hour, the state of the wind. Now and then a longer note appears, about a
storm that lasted three days or a boat that lost its mast and drifted onto the sand bar. The log
runs for forty years and stops in the middle of a page.

Bread is one of the oldest prepared foods. Flour and water are mixed into a dough, which is left
to rest so that yeast can produce gas and the dough can rise. The loaf is then shaped and baked.
Small changes in time, temperature or the kind of flour give very different results, which is why
bakers often keep careful notes and repeat the same method every day.

In the winter of that year the school moved into a new building with tall windows and a library
on the second floor. The students carried the books up the stairs in boxes, one class at a time,
and the librarian sorted them by subject over the following weeks. Some of the older volumes had
not been opened in decades, and a few still held letters, pressed flowers and train tickets.

Mathematics often begins with counting, but it quickly moves to patterns that have nothing to do
with numbers of things. A mathematician may study shapes, the ways in which a set can be arranged,
or the rules that a system must follow. Proofs are written so that each step follows from the one
before, and a single mistake can make the whole argument fail.

The city council met on the first Monday of every month. Meetings began at seven in the evening
and usually ended before ten, though a debate about a new road once went on until after midnight.
Residents could speak for three minutes each, and many of them came with written statements that
they read aloud while the members listened and took notes.

Birds that migrate over long distances rely on several sources of information to find their way.
They use the position of the sun during the day and the pattern of the stars at night, and some
species appear to sense the magnetic field of the earth. Young birds on their first journey often
follow older ones, learning the route as they travel.

A small engine turns fuel into motion by burning it in a closed space. The expanding gas pushes a
piston, the piston turns a shaft, and the shaft drives whatever the engine is connected to. Most
of the energy in the fuel is lost as heat, so engineers have spent more than a century looking for
ways to waste less of it.

The museum holds a collection of maps drawn by hand over three hundred years. The earliest show the
coast in detail but leave the interior almost blank, with a few rivers and the names of towns that
no longer exist. Later maps fill the empty spaces with roads, farms and rail lines, and the newest
ones were made from photographs taken from the air.

Gardens change with the seasons. In spring the first green shoots appear, followed by flowers in
early summer and fruit in the autumn. During the winter most plants rest, and the gardener repairs
fences, cleans tools and plans what to grow next year. Good soil, enough water and patience matter
more than any single secret.
"""

# Evaluation text (different prose, same register), saved as eval-text.txt.
EVAL_TEXT = """\
The old railway station stands at the edge of the town, a long building of red brick with a clock
above the main door. Trains stopped there for more than eighty years, carrying coal to the coast and
passengers to the capital. When the line closed, the station was sold to a family who turned the
waiting room into a cafe and the ticket office into a small shop that sells maps and postcards.

Most visitors come in the summer. They walk along the old track bed, which has become a path for
cyclists and walkers, and stop at the cafe for tea before the long climb back up the hill. In the
autumn the path is quieter, and the trees on either side turn yellow and orange. In winter the cafe
opens only at the weekend, and the owners spend the rest of the week repairing the roof and painting
the window frames.

A river runs beside the path for several miles. It is shallow in most places, and children often
wade across it in the warm months, looking for small fish and smooth stones. After heavy rain the
water rises quickly and turns brown, and the wooden bridges are sometimes closed until it falls
again. A local group checks the banks every spring and plants willows where the soil has washed
away.

The town itself grew up around a market. Farmers brought sheep, cattle and grain from the
surrounding valleys, and traders came from the coast with salt, cloth and tools. The market square
is still the centre of the town, and on Saturdays it fills with stalls selling vegetables, cheese,
bread and honey. The oldest building on the square is the hall where the market court once met to
settle disputes about weights, prices and debts.

Records kept in the hall show how the town changed over the centuries. In good years the lists of
traders run to several pages, and the fees they paid helped to build the church tower and the
stone bridge. In bad years, after a poor harvest or an outbreak of disease, the lists are short and
the notes in the margin mention empty stalls and unpaid rents. Historians have used these records
to estimate how many people lived in the town and what they ate.

The school was founded by a merchant who had made his fortune in the wool trade. He left money in
his will for a master to teach twelve boys to read, write and keep accounts. The first classes were
held in a room above the market hall, and the school moved to its present building two hundred
years later. Girls were admitted for the first time at the start of the last century, and the
school now has more than six hundred pupils.

Weather has always shaped life in the valley. Late frosts can ruin the fruit on the trees, and a dry
summer leaves the grass thin and brown on the higher fields. Farmers watch the sky and the behaviour
of animals, and many still keep notebooks in which they write down the date of the first snow, the
first cuckoo and the start of the harvest. Read together, these notebooks show that spring now
arrives about two weeks earlier than it did when they were first kept.

At the top of the hill above the town there is a ring of standing stones. Nobody knows exactly who
raised them or why, though there are many stories. Some say the stones mark the place where a
battle was fought; others say they were set up to follow the movement of the sun through the year.
On the longest day of summer a small crowd gathers at dawn to watch the sun rise between the two
tallest stones, and then walks down to the town for breakfast.
"""


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer():
    """Byte-level BPE, vocab VOCAB, specials <pad>=0 <eos>=1 <bos>=2 <unk>=3; adds BOS on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([p for p in TOKENIZER_TEXT.split("\n\n")], trainer=trainer, length=None)
    for i, s in enumerate(SPECIAL):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
    )
    return tok


def save_tokenizer(tok, out_dir: str) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        add_bos_token=True, add_eos_token=False, model_max_length=256,
    )
    hf_tok.save_pretrained(out_dir)
    # Keep exactly the two tokenizer files (drop special_tokens_map.json etc. if written).
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update({"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
                "unk_token": "<unk>", "pad_token": "<pad>"})
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def check_tokenizer(out_dir: str) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(out_dir)
    hf.model_max_length = sys.maxsize  # silence the "longer than model_max_length" warning below
    s = "The river rises in a ring of low hills."
    a = raw.encode(s).ids
    b = hf(s)["input_ids"]
    c = hf(s, add_special_tokens=False)["input_ids"]
    assert a == b and a[0] == BOS and b[1:] == c, (a, b, c)
    assert hf.decode(c) == s, hf.decode(c)
    assert UNK not in hf(EVAL_TEXT, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- models

def gemma2_config():
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24,
        sliding_window=16, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=256, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
    )


def gemma3_config():
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
        sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        attn_logit_softcapping=None, final_logit_softcapping=None,
        rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
    )


def build_model(config, gen: torch.Generator, bf16: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                std = STD_NORM
            elif "embed_tokens" in name:
                std = STD_EMBED
            else:
                std = STD_LINEAR
            p.add_(torch.randn(p.shape, generator=gen) * std)
            if bf16:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def save_model(model, out_dir: str, bf16: bool) -> None:
    import copy

    m = copy.deepcopy(model)
    if bf16:
        m = m.to(torch.bfloat16)
    m.config.dtype = torch.bfloat16 if bf16 else torch.float32
    m.save_pretrained(out_dir, safe_serialization=True)
    # generation_config.json is not part of the fixture contract; keep the folder minimal.
    gc = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)


# ----------------------------------------------------------------------------- references

def make_input_ids(gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(4, VOCAB, (BATCH, SEQ), generator=gen, dtype=torch.int64)
    ids[0, 0] = BOS
    return ids


def capture(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    hooks = []
    layers = model.model.layers

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def pre_layer0(mod, args, kwargs):
        out["embeds"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    hooks.append(layers[0].register_forward_pre_hook(pre_layer0, with_kwargs=True))
    for li, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(
            lambda mod, args, output, li=li: out.__setitem__(f"layer.{li}", first(output).detach().clone())))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, args, li=li: out.__setitem__(f"mlp_act.{li}", args[0].detach().clone())))
    hooks.append(model.model.norm.register_forward_hook(
        lambda mod, args, output: out.__setitem__("final_norm", first(output).detach().clone())))

    # Record the pre-softcap attention scores (gemma2) through torch.tanh, to check the softcap bites.
    tanh_inputs = []
    real_tanh = torch.tanh

    def spy_tanh(x, *a, **k):
        if x.dim() == 4:
            tanh_inputs.append(x.detach().clone())
        return real_tanh(x, *a, **k)

    torch.tanh = spy_tanh
    try:
        with torch.no_grad():
            res = model(input_ids=ids, use_cache=False, output_attentions=True)
    finally:
        torch.tanh = real_tanh
        for h in hooks:
            h.remove()
    out["logits"] = res.logits.detach().clone()
    out["_attn"] = [a.detach() for a in res.attentions] if res.attentions is not None else []
    out["_tanh"] = tanh_inputs
    return out


def report_stats(name: str, cfg, acts: dict) -> None:
    lg = acts["logits"]
    spread = (lg.max(-1).values - lg.min(-1).values)
    print(f"  {name}: logits std {lg.std():.3f}, per-position max-min {spread.min():.2f}..{spread.max():.2f}")
    if acts["_attn"]:
        maxp = torch.stack([a.max(-1).values.mean() for a in acts["_attn"]])
        print(f"  {name}: mean max attention prob per layer {[round(float(x), 3) for x in maxp]}")
    for li in range(cfg.num_hidden_layers):
        a = acts[f"mlp_act.{li}"]
        print(f"  {name}: mlp_act.{li} rms {a.pow(2).mean().sqrt():.3f} max|.| {a.abs().max():.2f}; "
              f"layer.{li} rms {acts[f'layer.{li}'].pow(2).mean().sqrt():.3f}")
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap:
        s = torch.cat([t.flatten() for t in acts["_tanh"]]) * cap  # tanh input is score / cap
        frac = float((s.abs() > cap).float().mean())
        print(f"  {name}: attention scores (pre-softcap) max|s| {s.abs().max():.2f}, "
              f"{100 * frac:.1f}% beyond the cap {cap}")
        if frac < 0.01:
            raise SystemExit(f"{name}: the attention softcap is barely reached; raise STD_LINEAR")
    if float(spread.min()) < 2.0:
        raise SystemExit(f"{name}: logits spread too small")


def save_reference(path: str, ids: torch.Tensor, acts: dict, cfg) -> None:
    from safetensors.torch import save_file

    tensors = {"input_ids": ids.contiguous()}
    for k, v in acts.items():
        if not k.startswith("_"):
            tensors[k] = v.to(torch.float32).contiguous()
    n = cfg.num_hidden_layers
    expect = {"input_ids": (BATCH, SEQ), "embeds": (BATCH, SEQ, cfg.hidden_size),
              "final_norm": (BATCH, SEQ, cfg.hidden_size), "logits": (BATCH, SEQ, cfg.vocab_size)}
    for li in range(n):
        expect[f"layer.{li}"] = (BATCH, SEQ, cfg.hidden_size)
        expect[f"mlp_act.{li}"] = (BATCH, SEQ, cfg.intermediate_size)
    assert set(tensors) == set(expect), sorted(set(tensors) ^ set(expect))
    for k, shape in expect.items():
        assert tuple(tensors[k].shape) == shape, (k, tuple(tensors[k].shape), shape)
    save_file(tensors, path, metadata={"format": "pt"})


# ----------------------------------------------------------------------------- checks

def reload_and_check(model, out_dir: str, bf16: bool):
    """Reload the saved folder in fp32/eager; weights must equal the in-memory (rounded) ones."""
    loaded = hfref.load_model(out_dir)
    ref = dict(model.named_parameters())
    got = dict(loaded.named_parameters())
    assert set(ref) == set(got), set(ref) ^ set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), f"{out_dir}: {k} changed on save/reload"
    tied = torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)
    assert tied == bool(loaded.config.tie_word_embeddings), f"{out_dir}: lm_head tied {tied}, config says otherwise"
    return loaded


def saved_tensor_names(path: str) -> dict[str, tuple[str, list[int]]]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}


def run_hf_eval(outdir: str, model: str, base: str | None = None) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [sys.executable, os.path.join(here, "hf_eval.py"), model, "--text", "eval-text.txt",
           "--seq", "32", "--windows", "4", "--threads", "1", "--json"]
    if base:
        cmd += ["--base", base]
    res = subprocess.run(cmd, cwd=outdir, check=True, capture_output=True, text=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for k in ("load_s", "eval_s", "threads"):  # run-dependent; keep the file reproducible
        out.pop(k, None)
    out["command"] = ("scripts/hf_eval.py " + " ".join(cmd[2:])).replace(
        f" {model} ", f" tests/fixtures/{model} ").replace("eval-text.txt", "tests/fixtures/eval-text.txt")
    if base:
        out["command"] = out["command"].replace(f"--base {base}", f"--base tests/fixtures/{base}")
    return out


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- main

# The files this script owns in a fixture folder. Others (e.g. generate-reference.json from
# make_generate_fixture.py) are left alone.
OWNED = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "reference.safetensors", "eval-reference.json")


def fresh_dir(outdir: str, name: str) -> str:
    d = os.path.join(outdir, name)
    os.makedirs(d, exist_ok=True)
    for fn in OWNED:
        p = os.path.join(d, fn)
        if os.path.exists(p):
            os.remove(p)
    return d


def main() -> int:
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    if len(sys.argv) > 2 or outdir in ("-h", "--help"):
        print(__doc__)
        return 0 if outdir in ("-h", "--help") else 2
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)  # reproducible reductions
    torch.use_deterministic_algorithms(True)
    os.makedirs(outdir, exist_ok=True)
    print(f"make_fixtures.py: torch {torch.__version__}, transformers {hfref.versions()['transformers']} -> {outdir}")

    with open(os.path.join(outdir, "eval-text.txt"), "w", encoding="utf-8") as f:
        f.write(EVAL_TEXT)
    tok = build_tokenizer()

    gen = torch.Generator().manual_seed(SEED)
    specs = [("tiny-gemma2", gemma2_config(), False), ("tiny-gemma3", gemma3_config(), True)]
    built = {}
    for name, cfg, bf16 in specs:
        d = fresh_dir(outdir, name)
        model = build_model(cfg, gen, bf16)
        save_model(model, d, bf16)
        save_tokenizer(tok, d)
        check_tokenizer(d)
        loaded = reload_and_check(model, d, bf16)
        ids = make_input_ids(gen)
        acts = capture(loaded, ids)
        report_stats(name, loaded.config, acts)
        save_reference(os.path.join(d, "reference.safetensors"), ids, acts, loaded.config)
        built[name] = model

    # tiny-gemma3-perturbed: MLP weights only, then bf16 again.
    name = "tiny-gemma3-perturbed"
    d = fresh_dir(outdir, name)
    import copy

    pert = copy.deepcopy(built["tiny-gemma3"])
    with torch.no_grad():
        for pname, p in pert.named_parameters():
            if ".mlp." in pname:
                p.add_(torch.randn(p.shape, generator=gen) * STD_MLP_PERTURB)
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    save_model(pert, d, True)
    save_tokenizer(tok, d)
    reload_and_check(pert, d, True)

    for name in ("tiny-gemma2", "tiny-gemma3"):
        write_json(os.path.join(outdir, name, "eval-reference.json"), run_hf_eval(outdir, name))
    write_json(os.path.join(outdir, "tiny-gemma3-perturbed", "eval-reference.json"),
               run_hf_eval(outdir, "tiny-gemma3-perturbed", base="tiny-gemma3"))

    # Summary.
    print("make_fixtures.py: files")
    for root, _, files in sorted(os.walk(outdir)):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            print(f"  {os.path.relpath(p, outdir):45s} {os.path.getsize(p):9d} B  sha256 {digest}")
        if root != outdir:
            total = sum(os.path.getsize(os.path.join(root, fn)) for fn in files)
            print(f"  {os.path.relpath(root, outdir) + '/ total':45s} {total:9d} B")
    for name in ("tiny-gemma2", "tiny-gemma3"):
        names = saved_tensor_names(os.path.join(outdir, name, "model.safetensors"))
        dtypes = sorted({v[0] for v in names.values()})
        print(f"  {name}/model.safetensors: {len(names)} tensors, dtypes {dtypes}, "
              f"lm_head.weight {'PRESENT' if 'lm_head.weight' in names else 'absent (tied)'}")
        ev = json.load(open(os.path.join(outdir, name, "eval-reference.json")))
        print(f"  {name}: eval ppl {ev['ppl']:.4f} over {ev['tokens']} tokens")
    ev = json.load(open(os.path.join(outdir, "tiny-gemma3-perturbed", "eval-reference.json")))
    print(f"  tiny-gemma3-perturbed vs tiny-gemma3: ppl {ev['ppl']:.4f} kl {ev['kl']:.5f} "
          f"top1_agree {ev['top1_agree']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
