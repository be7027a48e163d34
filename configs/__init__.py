"""Run presets as code: small functions that return frozen configs (see configs/retrain.py)."""
