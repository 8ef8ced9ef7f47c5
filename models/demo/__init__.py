"""easel's demo set: tiny random models of every kind, built on first start (see demo_set.py).

One module per kind builds its models in their real on-disk formats; the tests' tiny models
(tests/models/tiny*.py) reuse these builders. Importing this package builds nothing.
"""

from models.demo.checkpoint import (
    DEMO_CODE,
    DEMO_VERSION,
    DEMO_XL_CODE,
    build_demo_pipeline,
    demo_spec,
    ensure_demo_model,
)
from models.demo.demo_set import (
    CONTROLNET_CODES,
    DEMO_NAME,
    DEMO_SET_VERSION,
    IP_ADAPTER_CODE,
    demo_specs,
    ensure_demo_set,
)

__all__ = [
    "CONTROLNET_CODES",
    "DEMO_CODE",
    "DEMO_NAME",
    "DEMO_SET_VERSION",
    "DEMO_VERSION",
    "DEMO_XL_CODE",
    "IP_ADAPTER_CODE",
    "build_demo_pipeline",
    "demo_spec",
    "demo_specs",
    "ensure_demo_model",
    "ensure_demo_set",
]
