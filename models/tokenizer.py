"""The SD text encoders' CLIP tokenizer, built offline from the bundled BPE vocabulary.

Single-file checkpoints carry no tokenizer, and hubs are out of reach, so the 49408-token
CLIPTokenizer files (vocab.json + merges.txt) are derived from the CLIP BPE merges that ship in
the package. The result is identical to the tokenizer published with SD 1.x / SDXL.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer

_BPE_FILE = Path(__file__).parent / "configs" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges: 256*2 bytes + merges + 2 = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_tokenizer_files(dest: Path, *, pad_token: str = EOS) -> Path:
    """Write vocab.json, merges.txt and the tokenizer configs of the CLIP tokenizer into dest.

    SD 1.x and SDXL's first tokenizer pad with the end token; SDXL's second one pads with "!".
    """
    dest.mkdir(parents=True, exist_ok=True)
    lines = gzip.decompress(_BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    base = list(_bytes_to_unicode().values())
    vocab = [*base, *(c + "</w>" for c in base), *("".join(m) for m in merges), BOS, EOS]
    (dest / "vocab.json").write_text(
        json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False)
    )
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return dest


VOCAB_SIZE = 49408


@cache
def _tokenizer_dir(cache_root: str, pad_token: str) -> Path:
    name = "clip-tokenizer" if pad_token == EOS else "clip-tokenizer-pad-" + str(ord(pad_token[0]))
    dest = Path(cache_root) / name
    if not (dest / "merges.txt").exists():
        write_tokenizer_files(dest, pad_token=pad_token)
    return dest


def clip_tokenizer(cache_root: Path, *, pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIPTokenizer whose files are derived once into cache_root and reused after."""
    return CLIPTokenizer.from_pretrained(str(_tokenizer_dir(str(cache_root), pad_token)))
