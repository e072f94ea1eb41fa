"""surgeon's recipe cookbook, installed as ``surgeon.recipes``."""
