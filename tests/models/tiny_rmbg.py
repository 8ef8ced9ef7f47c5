"""Tiny background-removal models, saved as the Hugging Face repository folders users install.

The builder is the demo set's (models/demo/rmbg.py), which the server uses too.
"""

from models.demo.rmbg import (  # noqa: F401
    FAMILIES,
    NOISE,
    WIDTH,
    save_tiny_rmbg,
)
