"""GenRecEdit: training-free injection of cold-start items into generative recommenders."""
import os

# Weights load from installed packages or local paths only; never from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# MKL's results may otherwise depend on the arrays' memory alignment (seen on AVX-512 CPUs: one-ulp differences
# between a live service and the same edits restored), which breaks exact restore and rollback. STRICT keeps MKL's
# fastest code path for the CPU and makes it alignment-independent; MKL reads it at its first call.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
