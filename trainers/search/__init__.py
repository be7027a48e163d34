"""Stage 1, the search: the architect (`architect.py`), the step (`trainer.py`), the loop and
its files (`loop.py`), the collapse monitor (`monitor.py`) and DARTS+ early stopping
(`stopping.py`), and DARTS as a KerasTuner oracle and tuner (`tuner.py`).

    from trainers import search
    result = search.run(configs.search.digits(), "runs/search")
"""
from trainers.runtime.run import DivergedError
from trainers.search.architect import Architect
from trainers.search.loop import SearchResult, run
from trainers.search.trainer import METRICS, SearchTrainer

__all__ = ["Architect", "DivergedError", "METRICS", "SearchResult", "SearchTrainer", "run"]
