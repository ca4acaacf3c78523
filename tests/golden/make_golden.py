#!/usr/bin/env python3
"""make_golden.py -- golden reference data for nightshift's demo model.

DEV TOOL ONLY. This script is not part of nightshift's build, tests or runtime;
nightshift never depends on Python. It was run once and its outputs are checked in.

What it makes (all in tests/golden/):
  golden.txt          line-based test cases (format below), parsed by the C tests
  logits_<case>.f32   raw little-endian float32 logits (n_vocab = 49152 values) of
                      the LAST prompt position of each case

How: an implementation independent of nightshift -- Hugging Face transformers
loading models/SmolLM2-135M-Instruct.Q4_1.gguf (it dequantizes Q4_1/Q8_0 to
float32, and un-permutes the llama Q/K weights back to HF's rotate_half layout).
For each case the prompt is tokenized, run once in float32 to get the logits of
the last prompt position, then greedily extended by exactly 32 tokens with a
manual argmax loop using the KV cache (no EOS stop).

Tokenizer: HF's GGUF tokenizer conversion (transformers 5.24.0) does NOT install
the SmolLM2 pre-tokenizer -- it uses ByteLevel(use_regex=True) only, without the
Digits(individual_digits=True) split that SmolLM2's tokenizer.json and llama.cpp's
"smollm" pre-type ("\\p{N}" split first, then the GPT-2 regex) apply. The two give
different ids for whitespace followed by digits (e.g. "a   42", "\\n\\n2024").
This script therefore re-installs Sequence[Digits(individual), ByteLevel] on a copy
of the HF tokenizer and uses that for the golden prompt_ids (it prints where the
two disagree). The 'digits' case exercises exactly that difference.

Extra self-checks (printed; see README.md):
  * config values (rms_norm_eps, rope_theta, tie_word_embeddings),
  * decoded greedy continuations (coherent English => Q/K un-permute is right),
  * float64 rerun of every case: max |logit32 - logit64| and whether greedy agrees,
  * a from-scratch numpy float64 llama forward straight on the GGUF tensors with
    llama.cpp conventions (interleaved-pair RoPE on the permuted Q/K rows), for the
    'en' case, compared with HF float64.

golden.txt format:
  # made by make_golden.py with transformers X, torch Y, gguf Z on <date>
  case <name>
  text_hex <prompt UTF-8 bytes as lowercase hex, one line>
  special <0|1>            1: tokenize with special tokens (<|im_start|> ...) parsed
  prompt_ids <n> <id> ...
  greedy_ids 32 <id> ...
  logits_file logits_<name>.f32
  top5 <id>:<logit> ...    (human reading only)
  end

Run from the repository root (CPU only, a few minutes on 2 cores):
  /path/to/python tests/golden/make_golden.py
Versions used for the checked-in data: Python 3.11, transformers 5.24.0,
torch 2.15.0 (CPU), tokenizers 0.23.3, gguf 0.19.0, numpy 2.4.6, accelerate 1.15.0
(transformers requires accelerate to load GGUF files).
"""

import datetime
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
import gguf  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402

MODEL_DIR = "models"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT_DIR = os.path.join("tests", "golden")
N_VOCAB = 49152
N_GEN = 32
MIN_MARGIN = 0.05   # smallest acceptable top1-top2 logit gap at any greedy step

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
        "<|im_end|>\n<|im_start|>assistant\n")

CODE = '''def fibonacci(n):
    # Return the n-th Fibonacci number, iteratively.
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


print(fibonacci(10))
'''

# Fixed sentence list for the ~1000-token 'long' case.
LONG_SENTENCES = [
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in long curls.",
    "Every evening the keeper climbed the spiral stairs and lit the great lamp by hand.",
    "Ships passing in the night relied on its steady beam to avoid the hidden rocks below.",
    "In the village, people spoke of the keeper as a quiet man who rarely came down to the market.",
    "Children sometimes dared each other to knock on his door, but none of them ever did.",
    "Scientists have long debated how migrating birds find their way across entire continents.",
    "Some species appear to sense the magnetic field of the Earth, while others follow the stars.",
    "Young birds often learn the route by flying alongside older members of the flock.",
    "Weather can push a flock hundreds of kilometers off course in a single night.",
    "Despite these dangers, most birds return to the same nesting grounds year after year.",
    "The recipe called for flour, butter, two eggs, and a pinch of salt.",
    "She mixed the ingredients slowly, letting the dough rest before rolling it out.",
    "While the oven warmed, the kitchen filled with the smell of cinnamon and toasted nuts.",
    "Baking, her grandmother had told her, is mostly patience and a little bit of courage.",
    "When the tray finally came out, the cookies were golden at the edges and soft in the middle.",
    "Modern cities face difficult choices about transport, housing, and public space.",
    "Wider roads tend to attract more traffic rather than reduce congestion.",
    "Many planners now favor trams, bicycle lanes, and streets designed for walking.",
    "Such changes are often unpopular at first, yet residents usually come to appreciate them.",
    "The hardest part is building agreement among people with very different daily needs.",
    "A small boat drifted across the lake as the morning mist began to lift.",
    "The fisherman cast his line and waited, listening to the calls of distant loons.",
    "He did not mind catching nothing; the silence itself was what he had come for.",
    "By noon the sun had burned away the last of the fog, revealing the mountains beyond.",
    "He rowed back to the shore with an empty bucket and a full heart.",
    "Learning a new language changes the way a person notices the world.",
    "Ordinary words suddenly carry surprising histories and unexpected meanings.",
    "Mistakes are inevitable, and they are often the fastest teachers.",
    "Over time, the strange sounds become familiar, and the familiar becomes a kind of home.",
    "Travelers who make the effort are usually rewarded with warmer welcomes.",
]


def long_text(tok, target_lo=950, target_hi=1100):
    """Deterministic paragraphs (5 sentences each) cycling through LONG_SENTENCES
    with a stride, grown sentence by sentence until about 1000 tokens."""
    order = [(i * 7) % len(LONG_SENTENCES) for i in range(len(LONG_SENTENCES))]
    paras, cur, k = [], [], 0
    while True:
        cur.append(LONG_SENTENCES[order[k % len(order)]])
        k += 1
        if len(cur) == 5:
            paras.append(" ".join(cur))
            cur = []
        text = "\n\n".join(paras + ([" ".join(cur)] if cur else []))
        n = len(tok.encode(text, add_special_tokens=False).ids)
        if n >= 1000:
            break
    assert target_lo <= n <= target_hi, n
    return text


def build_cases(fixed_tok):
    return [
        ("en", "The quick brown fox jumps over the lazy dog. It was a sunny afternoon, "
               "and the children were playing in the park.", 0),
        ("code", CODE, 0),
        ("zh", "今天天气很好，我们一起去公园散步吧。人工智能正在改变我们的生活。", 0),
        ("emoji", "Family: 👨\u200d👩\u200d👧\u200d👦 and flags 🇫🇷🇯🇵🇺🇸! Party time 🎉😀👍🏽", 0),
        ("ws", "a  b\t\tc\n\n\n  d    e", 0),
        ("digits", "The meeting is at 10:30 in room   42.\n\n2024 budget: $1,250.75 (up 3.5%).", 0),
        ("long", long_text(fixed_tok), 0),
        ("chat", CHAT, 1),
    ]


def make_fixed_tokenizer(hf_tok):
    """Copy of HF's converted tokenizer with SmolLM2's real pre-tokenizer."""
    t = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return t


def encode(t, text, special):
    # special=0: added/special tokens are NOT recognised in the text.
    t.encode_special_tokens = not special
    return t.encode(text, add_special_tokens=False).ids


@torch.no_grad()
def run_case(model, ids, dtype):
    inp = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=inp, use_cache=True)
    last = out.logits[0, -1].to(dtype).clone()
    past = out.past_key_values
    logits = last
    gen, margins = [], []
    for _ in range(N_GEN):
        top2 = torch.topk(logits, 2)
        nxt = int(top2.indices[0])
        margins.append(float(top2.values[0] - top2.values[1]))
        gen.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
    return last, gen, margins


# ---------------- numpy float64 reference on raw GGUF tensors ----------------
def numpy_reference_last_logits(path, ids):
    r = gguf.GGUFReader(path)

    def field(k):
        return r.fields[k].contents()

    n_layer = int(field("llama.block_count"))
    n_head = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    base = float(field("llama.rope.freq_base"))
    W = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        W[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
    emb = W["token_embd.weight"]            # [n_vocab, n_embd]
    n_embd = emb.shape[1]
    hd = n_embd // n_head
    T = len(ids)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    pos = np.arange(T, dtype=np.float64)[:, None]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)   # [hd/2]
    ang = pos * inv                                                # [T, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope_interleaved(x):   # llama.cpp LLAMA_ROPE_TYPE_NORM: pairs (2i, 2i+1)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = x0 * cos - x1 * sin
        y[..., 1::2] = x0 * sin + x1 * cos
        return y

    mask = np.triu(np.full((T, T), -np.inf), 1)
    x = emb[ids]
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = (h @ W[p + "attn_q.weight"].T).reshape(T, n_head, hd)
        k = (h @ W[p + "attn_k.weight"].T).reshape(T, n_kv, hd)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, n_kv, hd)
        q, k = rope_interleaved(q), rope_interleaved(k)
        att = np.empty((T, n_head, hd))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            att[:, hh, :] = s @ v[:, kv, :]
        x = x + att.reshape(T, n_embd) @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    xf = rms(x[-1], W["output_norm.weight"])
    out_w = W.get("output.weight", emb)
    return out_w @ xf


def main():
    if not os.path.isfile(os.path.join(MODEL_DIR, GGUF_FILE)):
        sys.exit("run from the repository root (models/%s not found)" % GGUF_FILE)
    torch.manual_seed(0)
    vers = dict(transformers=transformers.__version__, torch=torch.__version__,
                gguf=pkg_version("gguf"), tokenizers=tokenizers.__version__,
                numpy=np.__version__)
    print("versions:", vers, "threads:", torch.get_num_threads())

    hf_tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF_FILE,
                                                 dtype=torch.float32)
    model.eval()
    cfg = model.config
    rope_theta = getattr(cfg, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    print("config: rms_norm_eps=%r rope_theta=%r tie_word_embeddings=%r vocab=%d "
          "layers=%d heads=%d kv_heads=%d hidden=%d ffn=%d" % (
              cfg.rms_norm_eps, rope_theta, cfg.tie_word_embeddings, cfg.vocab_size,
              cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
              cfg.hidden_size, cfg.intermediate_size))
    assert cfg.vocab_size == N_VOCAB
    print("tied lm_head:", model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())

    print("HF converted pre_tokenizer:", hf_tok.backend_tokenizer.pre_tokenizer)
    fixed = make_fixed_tokenizer(hf_tok)
    for s in ["12345 3.14", "a   42", "x\n\n2024"]:
        a = hf_tok(s, add_special_tokens=False).input_ids
        b = encode(fixed, s, 0)
        print("tokenize %r: HF-gguf %s %s | smollm %s %s" % (
            s, a, hf_tok.convert_ids_to_tokens(a), b, hf_tok.convert_ids_to_tokens(b)))

    cases = build_cases(fixed)
    results = []
    for name, text, special in cases:
        ids = encode(fixed, text, special)
        hf_ids = hf_tok(text, add_special_tokens=False).input_ids if special else None
        if special:
            assert ids == hf_ids, "special-token parse differs"
            assert ids[0] == 1, ids[:3]
        else:
            fixed.encode_special_tokens = False
            hf_like = hf_tok(text, add_special_tokens=False).input_ids
            if hf_like != ids:
                print("  NOTE [%s]: HF-gguf tokenizer (no Digits split) gives different ids "
                      "(%d vs %d tokens)" % (name, len(hf_like), len(ids)))
        assert hf_tok.decode(ids) == text, "round trip failed for " + name
        last, gen, margins = run_case(model, ids, torch.float32)
        results.append((name, text, special, ids, last, gen, margins))
        print("[%s] %d prompt tokens; greedy min top1-top2 margin %.4f (step %d); "
              "continuation: %r" % (name, len(ids), min(margins), margins.index(min(margins)),
                                    hf_tok.decode(gen)))
        if min(margins) < MIN_MARGIN:
            print("  WARNING [%s]: near-tie in greedy decoding (margin < %g): the C side may "
                  "legitimately diverge; pick another prompt" % (name, MIN_MARGIN))

    # write outputs
    date = datetime.date.today().isoformat()
    lines = ["# made by make_golden.py with transformers %s, torch %s, gguf %s on %s" % (
        vers["transformers"], vers["torch"], vers["gguf"], date)]
    for name, text, special, ids, last, gen, margins in results:
        fn = "logits_%s.f32" % name
        arr = last.numpy().astype("<f4")
        assert arr.shape == (N_VOCAB,)
        arr.tofile(os.path.join(OUT_DIR, fn))
        top = torch.topk(last, 5)
        lines += [
            "case %s" % name,
            "text_hex %s" % text.encode("utf-8").hex(),
            "special %d" % special,
            "prompt_ids %d %s" % (len(ids), " ".join(map(str, ids))),
            "greedy_ids %d %s" % (len(gen), " ".join(map(str, gen))),
            "logits_file %s" % fn,
            "top5 %s" % " ".join("%d:%.6f" % (int(i), float(v))
                                 for v, i in zip(top.values, top.indices)),
            "end",
        ]
    with open(os.path.join(OUT_DIR, "golden.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", os.path.join(OUT_DIR, "golden.txt"))

    # float64 cross-check of every case
    model64 = model.double()
    print("float64 check (max |fp32 - fp64| over the last-position logits; greedy agreement):")
    for name, text, special, ids, last, gen, margins in results:
        last64, gen64, _ = run_case(model64, ids, torch.float64)
        d = (last.double() - last64).abs()
        same = sum(1 for a, b in zip(gen, gen64) if a == b)
        first_diff = next((i for i, (a, b) in enumerate(zip(gen, gen64)) if a != b), None)
        print("  [%s] max abs diff %.3e (mean %.3e, max|logit| %.2f); greedy equal %s%s" % (
            name, float(d.max()), float(d.mean()), float(last64.abs().max()),
            same == N_GEN, "" if first_diff is None else " (first diff at step %d)" % first_diff))
        if name == "en":
            en64 = last64

    # independent numpy float64 forward on the raw GGUF tensors (llama.cpp conventions)
    en_ids = results[0][3]
    ref = numpy_reference_last_logits(os.path.join(MODEL_DIR, GGUF_FILE), en_ids)
    d = np.abs(ref - en64.numpy())
    print("numpy/GGUF interleaved-RoPE fp64 vs HF fp64 ('en'): max abs diff %.3e, argmax %d vs %d" % (
        d.max(), int(ref.argmax()), int(en64.argmax())))
    d32 = np.abs(ref - results[0][4].double().numpy())
    print("numpy/GGUF fp64 vs HF fp32 golden ('en'): max abs diff %.3e" % d32.max())


if __name__ == "__main__":
    main()
