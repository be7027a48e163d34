"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 search together.

Loopback only, bounded in time: both workers are killed if they are not done in
WORKER_TIMEOUT seconds. Each worker trains on its shard of every global batch;
the all-reduced updates must leave both with the same alphas and genotype.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT = 420

WORKER = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
from trainers import search
from configs import SearchConfig
import darts_tf

config = SearchConfig(dataset="digits", data_limit=200, epochs=1, steps_per_epoch=3,
                      batch_size=8, init_channels=4, num_cells=3, num_nodes=1,
                      strategy="multi_worker", seed=5, log_every=1, checkpoint_every=10)
model_fn = lambda: darts_tf.Supernet(num_classes=10, init_channels=4, num_cells=3, num_nodes=1,
                                     input_channels=1,
                                     primitives=("none", "max_pool_3x3", "sep_conv_3x3"))
result = search.run(config, sys.argv[1], model_fn=model_fn)
with open(sys.argv[2], "w") as f:
    json.dump({"architecture": result.architecture,
               "alphas": {k: v.tolist() for k, v in result.alphas.items()},
               "workdir": result.workdir, "steps": result.global_step}, f)
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_end_with_the_same_genotype(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(ROOT),
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        out = tmp_path / f"worker{index}.json"
        log = open(tmp_path / f"worker{index}.log", "w")
        workers.append((subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "run"), str(out)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), out, log))
    try:
        for proc, _, _ in workers:
            proc.wait(timeout=WORKER_TIMEOUT)
    finally:
        for proc, _, log in workers:
            if proc.poll() is None:
                proc.kill()
            log.close()
    for index, (proc, _, _) in enumerate(workers):
        assert proc.returncode == 0, (tmp_path / f"worker{index}.log").read_text()[-3000:]
    chief, other = (json.loads(out.read_text()) for _, out, _ in workers)
    assert chief["steps"] == other["steps"] == 3
    assert chief["architecture"] == other["architecture"]
    for name, value in chief["alphas"].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(other["alphas"][name]))
    # The alphas did move from their 1e-3 * N(0, 1) start. The write policy
    # (trainers.runtime.run): only the chief writes the work directory; the other worker
    # writes only its checkpoints, apart.
    assert max(abs(np.asarray(v)).max() for v in chief["alphas"].values()) > 1e-3
    assert Path(chief["workdir"]) == Path(other["workdir"]) == tmp_path / "run"
    assert (tmp_path / "run" / "genotype.json").exists()
    assert (tmp_path / "run" / "checkpoints" / "checkpoint").exists()
    private = tmp_path / "run" / ".worker_1"
    assert sorted(p.name for p in private.iterdir()) == ["checkpoints"]
