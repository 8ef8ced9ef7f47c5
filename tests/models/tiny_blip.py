"""A tiny random-weight BLIP captioner, saved as the Salesforce/blip-image-captioning-* folders are.

The builder is the demo set's (models/demo/blip.py), which the server uses too.
"""

from models.demo.blip import (  # noqa: F401
    BOS,
    IMAGE_SIZE,
    SEED,
    SPECIAL,
    VOCAB,
    WEIGHT_STD,
    WORDS,
    save_tiny_blip,
    tiny_blip,
)
