"""Trainers: search, retraining, evaluation."""
