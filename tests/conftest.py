import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import settings  # noqa: E402 - after the environment it reads

# Property tests explore a fixed set of examples, so a CI run is reproducible.
settings.register_profile("gradlint", derandomize=True, deadline=None)
settings.load_profile("gradlint")
