"""GenRecEdit: training-free injection of cold-start items into generative recommenders."""
import os

# Weights load from installed packages or local paths only; never from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
