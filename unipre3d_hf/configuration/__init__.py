"""Configurations (architecture only, no torch import): one file per backbone plus the pre-training composite."""
