"""Stage 2, retraining: the step (`trainer.py`) and the loop with its files (`loop.py`).

    from trainers import retrain
    result = retrain.run(configs.retrain.digits(), "runs/retrain")
"""
from trainers.retrain.loop import RetrainResult, prepare, run
from trainers.retrain.trainer import METRICS, RetrainTrainer
from trainers.runtime.run import DivergedError

__all__ = ["DivergedError", "METRICS", "RetrainResult", "RetrainTrainer", "prepare", "run"]
