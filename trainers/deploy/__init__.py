"""Stage 3, deployment: the exporter (`export.py`: model.keras + SavedModel with its data
set's spec), the evaluation of an exported model (`evaluate.py`: accuracy, size, latency),
the LiteRT export and interpreter (`tflite.py`) and predictions for image files
(`predict.py`)."""
