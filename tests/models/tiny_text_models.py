"""Tiny text models in the folder layouts users download, for prompt enhancement and translation.

The builders are the demo set's (models/demo/text_models.py), which the server uses too.
"""

from models.demo.text_models import (  # noqa: F401
    ENDOFTEXT,
    INIT_STD,
    M2M100_SPECIALS,
    MARIAN_SPECIALS,
    PROMPTS,
    QUIET_SCALE,
    TINY_SEQ2SEQ,
    save_tiny_causal_lm,
    save_tiny_m2m100,
    save_tiny_marian,
)
