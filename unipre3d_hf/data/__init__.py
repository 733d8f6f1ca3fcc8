"""HF Datasets schemas, converters (ShapeNet multi-view, ScanNet), built-in mini sets, transforms and collators."""
