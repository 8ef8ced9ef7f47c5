"""easel's protocol front ends; server/app.py builds the application.

Every easel process (`easel serve`, a cluster worker) imports this package before anything
imports huggingface_hub, which reads HF_HUB_OFFLINE once, at import: so the Hub is switched off
here, for the whole process. Every loader already passes local_files_only; offline mode is the
second lock, so that a load that forgot it fails instead of fetching a name from the Hub (no
string a client sends may ever turn into a download).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
