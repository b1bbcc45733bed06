"""Build the CLIP ViT-L/14 tokenizer files Serena ships in ``modules/sd_configs/tokenizer/``.

Stable Diffusion 1.x uses OpenAI's CLIP BPE tokenizer. Its merges ship inside the ``openai-clip`` package as
``clip/bpe_simple_vocab_16e6.txt.gz``; this script derives the ``vocab.json``/``merges.txt`` pair that
``transformers.CLIPTokenizer`` reads, plus the two small config files, so the tokenizer loads with no model hub.

The package is located with ``importlib.util.find_spec`` and never imported: ``import clip`` needs torchvision
and ``pkg_resources``, neither of which Serena installs.

Usage: ``venv/bin/python tools/build_clip_tokenizer.py [--bpe FILE] [--out DIR]``
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "modules", "sd_configs", "tokenizer")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"

# CLIP keeps the first 48,894 merges of the file: 49,408 ids = 512 byte tokens + merges + 2 special tokens.
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
REFERENCE_PROMPT = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def find_bpe_file() -> str:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``openai-clip`` package."""
    spec = importlib.util.find_spec("clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(location, BPE_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{BPE_FILE} not found: install openai-clip (pip install openai-clip==1.0.1)")


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, soft hyphen…) are moved to
    code points from U+0100 up, so no token contains whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def derive(bpe_path: str) -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` from the gzipped BPE file; merges are ``"left right"`` strings."""
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    symbols = byte_symbols()
    n_merges = VOCAB_SIZE - 2 * len(symbols) - 2
    merges = lines[1:1 + n_merges]  # line 0 is a version header
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: expected {VOCAB_SIZE} distinct tokens, got {len(vocab)}")
    return vocab, merges


def write(out_dir: str, vocab: dict[str, int], merges: list[str]) -> None:
    """Write the four tokenizer files ``CLIPTokenizer.from_pretrained(out_dir)`` reads."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "add_prefix_space": False, "errors": "replace", **special}
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")


def check(out_dir: str) -> list[int]:
    """Load the written files with transformers and return the ids of the reference prompt."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(out_dir, local_files_only=True)
    ids = tokenizer(REFERENCE_PROMPT)["input_ids"]
    if ids != REFERENCE_IDS or tokenizer.model_max_length != 77 or len(tokenizer) != VOCAB_SIZE:
        raise SystemExit(f"tokenizer check failed: {REFERENCE_PROMPT!r} -> {ids}, "
                         f"model_max_length {tokenizer.model_max_length}, {len(tokenizer)} tokens")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bpe", help=f"the {BPE_FILE} to read (default: the one in openai-clip)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    bpe_path = args.bpe or find_bpe_file()
    vocab, merges = derive(bpe_path)
    write(args.out, vocab, merges)
    ids = check(args.out)
    print(f"wrote {args.out}: {len(vocab)} tokens, {len(merges)} merges; {REFERENCE_PROMPT!r} -> {ids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
