"""A tiny random-weight BLIP captioner, saved as the Salesforce/blip-image-captioning-* folders are.

The folder holds what a `huggingface-cli download` of Salesforce/blip-image-captioning-base
leaves: config.json (BlipConfig, architectures BlipForConditionalGeneration) and
model.safetensors, generation_config.json, preprocessor_config.json (BlipImageProcessor) and a
BERT WordPiece tokenizer (vocab.txt, tokenizer.json, tokenizer_config.json) whose bos token is
"[DEC]", the token BLIP's decoder starts from. `BlipProcessor.from_pretrained(folder)` loads it
offline. Widths of 32, two layers each side and 32x32 images in 8x8 patches: a caption of a few
tokens takes milliseconds on a CPU.

Weights are random, re-drawn with a larger spread than transformers' initialisation (BLIP's
vision tower starts at std 1e-10, which would make every image give the same caption): different
images then get different captions, so a test can tell whose caption is whose.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
)

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = (
    "a an the of on in with at photo picture painting dog cat man woman child red blue green "
    "white black sitting standing running table tree sky car house street field water"
).split()
BOS = "[DEC]"  # BLIP's decoder start token (Salesforce's tokenizer adds it after BERT's vocab)
VOCAB = (*SPECIAL, *WORDS, BOS)
IMAGE_SIZE = 32
WEIGHT_STD = 0.3
# Seed 4 gives varied, non-empty captions (some ending before max_tokens) for plain, noisy and
# gradient pictures; some other seeds end a caption at once (an empty caption) for some images.
SEED = 4


def tiny_blip(*, seed: int = SEED) -> BlipForConditionalGeneration:
    """The model: BERT-style decoder and ViT encoder of width 32, random weights from `seed`."""
    ids = {token: i for i, token in enumerate(VOCAB)}
    width = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    config = BlipConfig(
        text_config={
            **width,
            "num_attention_heads": 4,
            "vocab_size": len(VOCAB),
            "max_position_embeddings": 64,
            "bos_token_id": ids[BOS],
            "pad_token_id": ids["[PAD]"],
            "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"],
            "projection_dim": 32,
        },
        vision_config={
            **width,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "projection_dim": 32,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:  # matrices and embeddings; norms and biases stay as built
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * WEIGHT_STD)
    return model


def save_tiny_blip(folder: Path, *, seed: int = SEED) -> Path:
    """A BLIP captioning folder at `folder` (created), loadable offline; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(
        vocab={token: i for i, token in enumerate(VOCAB)}, bos_token=BOS, model_max_length=64
    )
    tokenizer.save_pretrained(folder)  # tokenizer.json + tokenizer_config.json
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in VOCAB), encoding="utf-8")
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    tiny_blip(seed=seed).save_pretrained(folder, safe_serialization=True)
    return folder
