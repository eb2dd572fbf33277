"""One worker of the two-process training in test_multi_worker.py.

Run as `python tests/multi_worker_job.py DIRECTORY` with `TF_CONFIG`
naming the cluster and this worker: loads the starting weights from
`DIRECTORY/start.npz`, trains on `padded_data()` under
`tf.distribute.MultiWorkerMirroredStrategy` and saves the final weights
(in `model.weights` order) to `DIRECTORY/worker_<index>.npz`.

The model, the data and the training loop are defined here once; the test
imports them for its one-process reference, so both sides run the same
code and only the strategy differs.
"""

import pathlib
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_encoder import EncoderBlock
from keras_encoder import PositionalEncoding
from keras_encoder import SentencePooling
from keras_encoder.testing import padded_ids

VOCAB, LENGTH, CLASSES = 30, 12, 3
EXAMPLES, GLOBAL_BATCH, EPOCHS, LEARNING_RATE = 32, 8, 2, 0.1


def classifier():
    """Embedding (0 is padding), sinusoidal positions, a post-norm and a
    pre-norm block (2 heads, width 16, FFN 32, no dropout), masked mean
    pooling and a Dense head."""
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 16, mask_zero=True)(tokens)
    x = PositionalEncoding(LENGTH)(x)
    x = EncoderBlock(2, 32)(x)
    x = EncoderBlock(2, 32, norm_first=True)(x)
    # normalize=False: a fully padded sequence pools to 0, not 0/0.
    x = SentencePooling(normalize=False)(x)
    return keras.Model(tokens, keras.layers.Dense(CLASSES)(x))


def padded_data(seed=0):
    """(tokens, labels): EXAMPLES rows of random lengths, padded with 0;
    every fifth row is all padding."""
    rng = np.random.default_rng(seed)
    tokens = padded_ids(
        EXAMPLES, LENGTH, VOCAB, rng=rng, empty_rows=slice(None, None, 5)
    )
    return tokens, rng.integers(0, CLASSES, size=EXAMPLES)


def dataset(tokens, labels, batch_size):
    """The batches in order, `batch_size` examples each (the global batch
    under a strategy), sharded by data: with N workers, each global batch
    is cut in N equal consecutive parts and worker i gets part i."""
    data = tf.data.Dataset.from_tensor_slices((tokens, labels))
    data = data.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return data.with_options(options)


def train(start_weights, tokens, labels, batch_size=GLOBAL_BATCH):
    """The model trained with plain SGD from `start_weights`, EPOCHS times
    over the batches of `dataset`, under the current strategy: the default
    one (one process) or a multi-worker one.

    Each replica's loss is the sum of its examples' cross-entropies divided
    by the global batch size, and the Keras optimizer sums the gradients
    over the replicas before it applies them: every step follows the
    gradient of the global batch's mean loss, however many replicas share
    the batch.

    A custom loop, not `Model.fit`: in Keras 3.15 `fit` under a strategy
    first calls `strategy.reduce("MEAN", (x, y), axis=None)` on a batch, and
    `MultiWorkerMirroredStrategy` refuses a tuple there ("Attempt to convert
    a value (PerReplica:...) with an unsupported type").
    """
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = classifier()
        model.set_weights(start_weights)
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=None
    )

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            losses = cross_entropy(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(
                losses, global_batch_size=batch_size
            )
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)

    @tf.function
    def step(x, y):
        strategy.run(replica_step, args=(x, y))

    batches = strategy.experimental_distribute_dataset(
        dataset(tokens, labels, batch_size)
    )
    for _ in range(EPOCHS):
        for x, y in batches:
            step(x, y)
    return model


def load_weights(path):
    """The arrays `np.savez(path, *arrays)` saved, in order."""
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def main(directory):
    directory = pathlib.Path(directory)
    # First, before anything starts TensorFlow's runtime.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    start = load_weights(directory / "start.npz")
    with strategy.scope():
        model = train(start, *padded_data())
    index = strategy.cluster_resolver.task_id
    np.savez(directory / f"worker_{index}.npz", *model.get_weights())


if __name__ == "__main__":
    main(*sys.argv[1:])
