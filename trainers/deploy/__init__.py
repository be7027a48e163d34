"""Stage 3, deployment: the exporter (`export.py`: model.keras + SavedModel) and the
evaluation of an exported model (`evaluate.py`: accuracy, parameters, latency)."""
