import torch

# Deterministic, single-threaded-friendly defaults for the CPU suite.
torch.manual_seed(0)
