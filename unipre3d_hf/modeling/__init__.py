"""Models: one file per backbone, the pre-training model, task heads, ModelOutput and AutoModelFor... classes."""
