"""Tiny text models in the folder layouts users download, for prompt enhancement and translation.

- save_tiny_causal_lm: a GPT-2 like Gustavosta/MagicPrompt-Stable-Diffusion (config.json,
  model.safetensors, vocab.json + merges.txt of a byte-level BPE, tokenizer_config.json).
- save_tiny_m2m100: like facebook/m2m100_418M (vocab.json + sentencepiece.bpe.model, the 100
  language tokens the tokenizer appends after the vocabulary).
- save_tiny_marian: like Helsinki-NLP/opus-mt-<source>-<target> (source.spm, target.spm and one
  shared vocab.json with "<pad>" last, as the Marian converter writes it).

The tokenizers are trained here, in well under a second, on a small corpus of prompts (the BPE
with the `tokenizers` library, the sentencepiece models with SentencePieceTrainer); weights are
random but seeded, so the same folder is built every time. The real loaders (AutoTokenizer,
AutoModelFor*.from_pretrained) read these folders offline.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

PROMPTS: tuple[str, ...] = (
    "a cat sitting on a roof, masterpiece, best quality, 8k",
    "portrait of a woman, bokeh, soft light, highly detailed",
    "a beautiful landscape with mountains and a lake at sunset, trending on artstation",
    "cyberpunk city at night, neon lights, rain, cinematic lighting, octane render",
    "close-up photo of a red fox in the snow, national geographic, 85mm",
    "oil painting of a vase of sunflowers, van gogh style, thick brush strokes",
    "a knight in shining armor, fantasy art, dramatic lighting, by greg rutkowski",
    "low poly isometric island, pastel colors, 3d render, unreal engine",
    "eine Katze auf dem Dach, Meisterwerk, beste Qualität",
    "un chat sur le toit, chef-d'oeuvre, meilleure qualité",
    "un gato en el tejado, obra maestra, mejor calidad",
    "一只猫坐在屋顶上，杰作，最好的质量",
    "屋根の上の猫、傑作、最高品質",
    "кошка на крыше, шедевр, лучшее качество",
)
ENDOFTEXT = "<|endoftext|>"
# fairseq's dictionary order, which M2M100's vocab.json keeps.
M2M100_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MARIAN_SPECIALS = ("</s>", "<unk>")  # "<pad>" goes last
# Weights drawn wider than the usual 0.02, so that the tiny translators' outputs depend on their
# inputs and language tokens (at 0.02 they write the same few tokens whatever they are given).
INIT_STD = 0.5
# M2M100's 108 language and made-up tokens outnumber half its tiny vocabulary: their embedding
# rows (tied to the output layer) are scaled by this, or the random model writes mostly them.
QUIET_SCALE = 0.5


def save_tiny_causal_lm(folder: Path) -> Path:
    """A random GPT-2 prompt continuer with a byte-level BPE trained on PROMPTS; returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _lines(), vocab_size=400, min_frequency=1, special_tokens=[ENDOFTEXT], show_progress=False
    )
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    eos = vocab[ENDOFTEXT]
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": ENDOFTEXT,
            "eos_token": ENDOFTEXT,
            "unk_token": ENDOFTEXT,
            "model_max_length": 128,
        },
    )
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return folder


# The size of both tiny translation models (M2M100 and Marian share the BART layout).
TINY_SEQ2SEQ: dict[str, Any] = {
    "d_model": 16,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "decoder_ffn_dim": 32,
    "max_position_embeddings": 128,
    "init_std": INIT_STD,
}


def save_tiny_m2m100(folder: Path, *, list_language_tokens: bool = True) -> Path:
    """A random M2M100 (any of its 100 languages to any) with its real tokenizer files.

    list_language_tokens: whether tokenizer_config.json names the "__xx__" language tokens as
    additional special tokens, as save_pretrained writes them (older folders do not: their
    tokenizer then decodes the language token as text)."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces = _train_sentencepiece(folder / "sentencepiece.bpe.model", model_type="bpe")
    vocab = {token: i for i, token in enumerate((*M2M100_SPECIALS, *pieces))}
    _write_json(folder / "vocab.json", vocab)
    codes = FAIRSEQ_LANGUAGE_CODES["m2m100"]
    tokenizer_config: dict[str, object] = {
        "tokenizer_class": "M2M100Tokenizer",
        "language_codes": "m2m100",
        "num_madeup_words": 8,
        "src_lang": "en",
        "model_max_length": 128,
    }
    if list_language_tokens:
        tokenizer_config["additional_special_tokens"] = [f"__{code}__" for code in codes]
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    languages = len(codes)
    config = M2M100Config(
        vocab_size=len(vocab) + languages + 8,  # + the language tokens and 8 made-up words
        **TINY_SEQ2SEQ,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    quiet = range(len(vocab), config.vocab_size)  # the language and made-up tokens
    _save_seq2seq(M2M100ForConditionalGeneration, config, folder, quiet=quiet)
    return folder


def save_tiny_marian(folder: Path, source: str, target: str) -> Path:
    """A random Marian translating `source` ("mul": any) into `target`, tokenizer files and the
    tokenizer_config.json language pair as Helsinki-NLP's opus-mt folders have them."""
    folder.mkdir(parents=True, exist_ok=True)
    pieces = _train_sentencepiece(folder / "source.spm", model_type="unigram")
    (folder / "target.spm").write_bytes((folder / "source.spm").read_bytes())
    vocab = {token: i for i, token in enumerate((*MARIAN_SPECIALS, *pieces, "<pad>"))}
    _write_json(folder / "vocab.json", vocab)
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "MarianTokenizer",
            "source_lang": source,
            "target_lang": target,
            "model_max_length": 128,
        },
    )
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab),
        **TINY_SEQ2SEQ,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
    )
    _save_seq2seq(MarianMTModel, config, folder)
    return folder


def _save_seq2seq(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    folder: Path,
    *,
    quiet: range = range(0),
) -> None:
    """Saves a seeded random model_class(config); the (tied) embedding rows of the `quiet` ids
    are scaled down, which makes the model unlikely to write those tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight[quiet.start : quiet.stop] *= QUIET_SCALE
    model.save_pretrained(folder)


def _train_sentencepiece(path: Path, *, model_type: str) -> list[str]:
    """Trains a small sentencepiece model on PROMPTS into path; its pieces, specials aside."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_lines(),
        model_writer=model,
        vocab_size=200,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return [
        processor.id_to_piece(i)
        for i in range(processor.get_piece_size())
        if not (processor.is_control(i) or processor.is_unknown(i))
    ]


def _lines() -> Iterator[str]:
    return iter(PROMPTS)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
