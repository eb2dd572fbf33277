"""Data-parallel training in two processes gives the weights of one.

Two worker processes on localhost (CPU, TensorFlow backend) train a small
classifier of our layers under `tf.distribute.MultiWorkerMirroredStrategy`,
each on its half of every global batch, talking gRPC over loopback ports.
This process trains the same model on the whole global batches under the
default strategy. The model, data and loop are in `multi_worker_job.py`,
shared by both sides.
"""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests import multi_worker_job as job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow",
        reason="the reference trains with tf.distribute",
    ),
]

WORKERS = 2
# Seconds the workers get, together (10 to 20 seen on two cores).
TIMEOUT = 120
TOLERANCE = 1e-5


def free_ports(count):
    """`count` distinct TCP ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(cluster, index):
    config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
    return dict(
        os.environ,
        TF_CONFIG=json.dumps(config),
        KERAS_BACKEND="tensorflow",
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
    )


def run_workers(directory):
    """Run the workers on `directory` to the end. Fails, with each worker's
    exit code and the end of its log, if one fails or they still run after
    TIMEOUT seconds. No worker outlives the call, also when the test is
    interrupted: once one has failed the others would wait for it forever,
    so they are killed."""
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(WORKERS)]}
    logs = [directory / f"worker_{i}.log" for i in range(WORKERS)]
    processes = []
    try:
        for index, log in enumerate(logs):
            with open(log, "wb") as out:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, job.__file__, str(directory)],
                        env=worker_env(cluster, index),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + TIMEOUT
        while (
            None in (codes := [p.poll() for p in processes])
            and not any(codes)
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    if codes != [0] * WORKERS:
        pytest.fail(
            f"workers failed or ran past {TIMEOUT} s\n"
            + "\n".join(
                f"worker {i}: "
                + ("still running, killed" if code is None else f"exit {code}")
                + f", log ends:\n{log.read_text()[-2000:]}"
                for i, (code, log) in enumerate(zip(codes, logs, strict=True))
            )
        )


def max_abs_difference(a, b):
    return max(np.abs(x - y).max() for x, y in zip(a, b, strict=True))


def assert_weights_close(got, want, paths):
    for g, w, path in zip(got, want, paths, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=TOLERANCE, err_msg=path)


def test_two_workers_train_like_one_process(tmp_path):
    """Two workers, each fed half of every global batch of padded
    sequences (every fifth fully padded), end with the weights that one
    process reaches on the whole global batches: 8 plain SGD steps, the
    same starting weights (saved here, loaded by the workers), and the
    loss of each step the mean over its global batch in both. Every weight
    within 1e-5 (about 1e-7 seen), and the workers agree with each other.

    The comparison can fail: the weights move far from the start, and
    training on worker 0's halves alone ends more than 1e-3 away."""
    keras.utils.set_random_seed(0)
    start = job.classifier().get_weights()
    np.savez(tmp_path / "start.npz", *start)

    run_workers(tmp_path)
    workers = [
        job.load_weights(tmp_path / f"worker_{i}.npz") for i in range(WORKERS)
    ]

    tokens, labels = job.padded_data()
    reference = job.train(start, tokens, labels)
    want = reference.get_weights()
    paths = [w.path for w in reference.weights]
    for got in workers:
        assert_weights_close(got, want, paths)
    assert_weights_close(workers[1], workers[0], paths)

    assert max_abs_difference(want, start) > 1e-2
    half = job.GLOBAL_BATCH // WORKERS
    first = np.arange(len(tokens)) % job.GLOBAL_BATCH < half
    alone = job.train(start, tokens[first], labels[first], batch_size=half)
    assert max_abs_difference(alone.get_weights(), workers[0]) > 1e-3
