#!/usr/bin/env python3
"""make_tokens.py: golden token ids for engine/tokenizer.c on the demo model.

Writes tests/golden/tokens_smollm2.txt, read by tests/unit/test_tokenizer.c.

How to run (from the repository root, with the demo model in models/):
    python3 tests/golden/make_tokens.py [models/SmolLM2-135M-Instruct.Q4_1.gguf]
Made with Python 3.11.7, tokenizers 0.23.3, transformers 5.24.0, gguf 0.19.0 (a dev-only
environment: nothing here is a dependency of nightshift).

Two independent Hugging Face tokenizers are built from the GGUF and compared:
  orig: the `tokenizers` library configured like SmolLM2's own tokenizer.json (BPE over
        the GGUF vocab and merges; pre_tokenizer Sequence[Digits(individual_digits=true),
        ByteLevel(add_prefix_space=false, use_regex=true)]; the 17 control tokens added as
        special tokens). This is what the model was trained with and what llama.cpp's
        "smollm" pre-type reproduces (split \\p{N} first, then the GPT-2 pattern on the
        pieces between). The golden ids come from this one.
  gguf: transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...), whose GGUF
        converter uses ByteLevel alone (no Digits step). It disagrees with orig on two
        cases, digits_spaces and digits_unicode: without Digits, ` ?\\p{N}+` keeps a space
        with the digit after it (" \u00bd" becomes one piece that merges; orig has Ġ, \u00bd),
        and "a  1" splits as a|Ġ|Ġ1 instead of a|ĠĠ|1 (Digits cuts first, so the GPT-2
        `\\s+(?!\\S)` sees the end of the piece rather than the digit). The script prints
        every disagreement; orig is what SmolLM2 was trained with, so orig wins.
File format, one case per line, tab-separated (lines starting with '#' are comments):
    name  parse_special(0|1)  text as lowercase hex of its UTF-8 bytes  ids (space-separated)
No BOS is added (add_bos_token is false for SmolLM2).
"""
import os
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer
import gguf

LONG_TEXT = """\
Nightly batch jobs have a rhythm of their own. At six in the evening the office empties, \
the last pull requests are merged, and a cron entry wakes a small program that reads a \
queue of several million prompts. Each prompt is rendered through a chat template, \
tokenized, sorted by length, and handed to an engine that keeps as many sequences in \
flight as its memory allows. When a sequence finishes, its slot is refilled at once; the \
result is compressed and written back in the same transaction that marks the item done.

Why does this matter? Because machines fail. Power flickers, a kernel update reboots the \
host at 3:14 a.m., or someone's laptop closes the SSH session that started the run. A job \
that cannot resume wastes the whole night, and the people who depend on its output (the \
data team, the evaluation group, the folks in marketing who wanted 40,000 product \
descriptions by Monday) lose a day. So the queue lives in SQLite, in WAL mode, with leases \
that expire after 300 seconds; nothing finished is redone and nothing is written twice.

The tokenizer sits at the very start of this pipeline. It must agree, byte for byte, with \
the tokenizer the model was trained with: a single differing id in a system prompt shifts \
every logit that follows. It must be fast enough that tokenizing ten million prompts takes \
minutes, not hours; it must never crash on hostile input such as invalid UTF-8, a megabyte \
without a single space, or a string full of control characters; and it must treat text \
that merely looks like a chat marker as text, unless the caller explicitly asks otherwise.

Consider a few examples. "Don't panic," she said, "it's only 42." The year 1969 saw the \
first Moon landing; 2024 saw models with 405 billion parameters. Prices rose 3.5% in Q3 \
(from $1,299.99 to $1,345.50). In Python you might write `for i in range(10): print(i)`, \
while in C the same loop reads `for (int i = 0; i < 10; i++) printf("%d\\n", i);`. URLs \
like https://example.org/docs?page=2&lang=en and e-mail addresses like ops@example.com \
appear constantly in real data, as do Unicode quotes \u201clike these\u201d, dashes \u2014 \
long and short \u2013 and the occasional caf\u00e9, na\u00efve r\u00e9sum\u00e9, or \
\u00e5ngstr\u00f6m.

Finally, a note on throughput. Prefill is matrix-matrix work and scales with the batch; \
decode reads every weight once per step, so small batches are memory-bound and large \
batches are compute-bound. An offline engine wins by keeping the batch as large as the \
cache permits, sorting by length so that sequences finishing together share a batch, and \
computing a shared prefix once. None of that helps if the very first step, turning text \
into integers, is wrong. That is why this file exists, and why it is checked in beside \
the script that produced it.

A second look at the details. Whitespace is the usual trap: two spaces before a digit, a \
tab after a newline, a non-breaking space in a pasted spreadsheet cell, or a Windows line \
ending at the end of a CSV row. Digits are split one by one for this model, so 2025 becomes \
four tokens and 3.14159 becomes seven, which is why arithmetic-heavy prompts are longer \
than they look. Code is dense with punctuation: `if (x != NULL && *x == '\\0') { return -1; }` \
costs more tokens per character than prose does, and indentation with four spaces per level \
shows up as runs of whitespace that the pre-tokenizer must keep together. Emoji such as \
\U0001f680 and \U0001f389 cost several byte-level tokens each; Chinese text such as \
\u673a\u5668\u5b66\u4e60 costs about one or two tokens per character. Keep these numbers in mind when \
setting a token budget for a job: a limit of 4096 tokens is roughly 3,000 English words, \
but far fewer characters of source code, and fewer still of emoji.
"""

PYTHON_CODE = '''\
import os


class Counter:
    """Counts things."""

    def __init__(self, start=0):
        self.n = start

    def add(self, k):
        if k < 0:
            raise ValueError(f"negative: {k}")
        for _ in range(k):
            self.n += 1
        return self.n
'''

C_CODE = """\
static int sum(const int *a, size_t n) {
\tint s = 0;
\tfor (size_t i = 0; i < n; i++) s += a[i];
\treturn s; /* no overflow check */
}
"""

# (name, parse_special, text)
CASES = [
    ("empty", 1, ""),
    ("hello", 1, "Hello world"),
    ("sentence", 1, "The quick brown fox jumps over the lazy dog."),
    ("leading_space", 1, " Hello"),
    ("contractions", 1, "I'm don't they'll we've she'd it's you're"),
    ("contractions_upper", 1, "I'M DON'T THEY'LL WE'VE"),
    ("apostrophes", 1, "\u2019s 's 'S '' \u2019 rock'n'roll"),
    ("mixed_case", 1, "HeLLo WoRLD camelCase snake_case SCREAMING_CASE iPhone"),
    ("digits", 1, "12345 3.14159"),
    ("digits_spaces", 1, "a  1 x2y 2024-01-15 1,000,000 0.5e-10  42   7"),
    ("digits_unicode", 1, "x\u00b2 \u00bd \u0663\u0664 \u2167 \uff11\uff12"),
    ("spaces_runs", 1, "a  b   c    d\t\te\n\nf \n g"),
    ("trailing_spaces", 1, "end   "),
    ("only_spaces", 1, "     "),
    ("newlines", 1, "\n\n\nline\r\nwindows\r\n\n  \n"),
    ("tabs", 1, "\tindented\n\t\tdouble\t tab-space \t"),
    ("unicode_spaces", 1, "a\u00a0b\u2003c\u3000d\u0085e\u200bf"),
    ("python", 1, PYTHON_CODE),
    ("c_code", 1, C_CODE),
    ("json", 1, '{"id": 17, "tags": ["a", "b"], "ok": true, "x": null}\n'),
    ("chinese", 1, "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002"),
    ("japanese", 1, "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca \u30fc"),
    ("korean", 1, "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4"),
    ("cyrillic_greek", 1, "\u0420\u043e\u0441\u0441\u0438\u044f \u0438 \u0423\u043a\u0440\u0430\u0457\u043d\u0430, \u03b1\u03b2\u03b3 \u03a9"),
    ("arabic", 1, "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645"),
    ("accents", 1, "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m"),
    ("combining", 1, "e\u0301 a\u0308 combining"),
    ("emoji", 1, "Emoji: \U0001f600\U0001f44d\U0001f3fd\U0001f1fa\U0001f1f8 and \u2764\ufe0f!"),
    ("emoji_zwj", 1, "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f469\U0001f3fe\u200d\U0001f4bb \U0001f3f3\ufe0f\u200d\U0001f308"),
    ("mixed_scripts", 1, "abc\u0430\u0431\u0432\u4e2d\u6587123xyz"),
    ("punctuation", 1, "Hello, World!!! ??? ... --- (parens) [brackets] {braces} @#$%^&*"),
    ("url_email", 1, "https://example.com/path?q=1&r=2 user@example.org"),
    ("control_chars", 1, "a\x00b\x01c\x7fd\x1be"),
    ("special_on", 1, "<|im_start|>user\nhi<|im_end|>"),
    ("special_off", 0, "<|im_start|>user\nhi<|im_end|>"),
    ("chat_on", 1, "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n"),
    ("special_partial", 1, "<|im_start|<|im_end|>> <|endoftext|>x <|im_end"),
    ("special_adjacent", 1, "<|endoftext|><|endoftext|> <repo_name>x<file_sep>"),
    ("long", 1, LONG_TEXT),
]

NAMES = [c[0] for c in CASES]
assert len(NAMES) == len(set(NAMES))


def field_str(r, key, i=None):
    f = r.fields[key]
    idx = f.data[0] if i is None else f.data[i]
    return bytes(f.parts[idx]).decode("utf-8")


def build_orig(path):
    """SmolLM2's tokenizer.json, reassembled from the GGUF's vocab and merges."""
    r = gguf.GGUFReader(path)
    ft = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(ft.parts[i]).decode("utf-8") for i in ft.data]
    fty = r.fields["tokenizer.ggml.token_type"]
    types = [int(fty.parts[i][0]) for i in fty.data]
    fm = r.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(fm.parts[i]).decode("utf-8").split(" ", 1)) for i in fm.data]
    assert field_str(r, "tokenizer.ggml.pre") == "smollm"
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(specials)
    for t in specials:
        assert tok.token_to_id(t.content) == vocab[t.content]
    return tok


def encode_orig(tok, text, special):
    tok.encode_special_tokens = not special
    return tok.encode(text, add_special_tokens=False).ids


def encode_gguf(tok, text, special):
    return tok.encode(text, add_special_tokens=False, split_special_tokens=not special)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokens_smollm2.txt")
    orig = build_orig(path)
    hf = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                       gguf_file=os.path.basename(path))
    lines = [
        "# tokens_smollm2.txt: golden token ids for models/SmolLM2-135M-Instruct.Q4_1.gguf,",
        "# made by tests/golden/make_tokens.py (see there for versions and method).",
        "# name<TAB>parse_special<TAB>utf-8 text as hex<TAB>ids",
    ]
    n_disagree = 0
    for name, special, text in CASES:
        ids = encode_orig(orig, text, special)
        other = encode_gguf(hf, text, special)
        if ids != other:
            n_disagree += 1
            print(f"disagree {name}: orig {ids[:24]} vs transformers-gguf {other[:24]}",
                  file=sys.stderr)
        assert orig.decode(ids, skip_special_tokens=False) == text, name
        lines.append(f"{name}\t{special}\t{text.encode('utf-8').hex()}\t{' '.join(map(str, ids))}")
        print(f"{name}: {len(ids)} tokens", file=sys.stderr)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(CASES)} cases, {n_disagree} disagreements with transformers-gguf",
          file=sys.stderr)


if __name__ == "__main__":
    main()
