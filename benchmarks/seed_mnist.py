"""The seed tutorial's training script, as written, with two changes: its metric is corrected
('accuracy' instead of CategoricalAccuracy, which reports 0.0992 for a 98.8% model on integer labels),
and MNIST is read from a local mirror instead of ``datasets.mnist.load_data()`` (no internet here).
A final ``model.evaluate`` reports the test accuracy. Prints one JSON line: {"test_accuracy": ..., "timings":
{phase: seconds}} (the timings are read around the tutorial's own lines; they change none of its work).

Run: ``python benchmarks/seed_mnist.py <mirror folder with the four .gz files>``
"""

import time

T0 = time.perf_counter()
import gzip  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.keras import layers  # noqa: E402

timings = {"import tensorflow": time.perf_counter() - T0}


def load_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", ndim, 4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


mirror = sys.argv[1]
# Prepare MNIST Dataset (instead of datasets.mnist.load_data(): the same uint8 arrays)
train_x, train_y = load_idx(f"{mirror}/train-images-idx3-ubyte.gz"), load_idx(f"{mirror}/train-labels-idx1-ubyte.gz")
test_x, test_y = load_idx(f"{mirror}/t10k-images-idx3-ubyte.gz"), load_idx(f"{mirror}/t10k-labels-idx1-ubyte.gz")

timings["load data"] = time.perf_counter() - T0 - sum(timings.values())

# Build Model
inputs = layers.Input((28, 28, 1))
net = layers.Conv2D(32, (3, 3), padding="SAME")(inputs)
net = layers.Activation("relu")(net)
net = layers.Conv2D(32, (3, 3), padding="SAME")(net)
net = layers.Activation("relu")(net)
net = layers.MaxPooling2D(pool_size=(2, 2))(net)
net = layers.Dropout(0.25)(net)

net = layers.Conv2D(64, (3, 3), padding="SAME")(net)
net = layers.Activation("relu")(net)
net = layers.Conv2D(64, (3, 3), padding="SAME")(net)
net = layers.Activation("relu")(net)
net = layers.MaxPooling2D(pool_size=(2, 2))(net)
net = layers.Dropout(0.25)(net)

net = layers.Flatten()(net)
net = layers.Dense(512)(net)
net = layers.Activation("relu")(net)
net = layers.Dropout(0.5)(net)
net = layers.Dense(10)(net)  # num_classes
net = layers.Activation("softmax")(net)

model = tf.keras.Model(inputs=inputs, outputs=net, name="Basic_CNN")

# Optimization
loss_fun = tf.keras.losses.sparse_categorical_crossentropy
metrics = ["accuracy"]  # corrected: the tutorial's CategoricalAccuracy() is wrong for integer labels
optm = tf.keras.optimizers.Adam()
model.compile(optimizer=optm, loss=loss_fun, metrics=metrics)

# Prepare Dataset
train_x = train_x[..., tf.newaxis]
test_x = test_x[..., tf.newaxis]
train_x = train_x / 255.0
test_x = test_x / 255.0

timings["build model"] = time.perf_counter() - T0 - sum(timings.values())

# Training
num_epochs = 1
batch_size = 32
model.fit(train_x, train_y, batch_size=batch_size, shuffle=True, epochs=num_epochs)
timings["fit"] = time.perf_counter() - T0 - sum(timings.values())

loss, accuracy = model.evaluate(test_x, test_y, verbose=0)
timings["evaluate"] = time.perf_counter() - T0 - sum(timings.values())
print(json.dumps({"test_accuracy": float(accuracy), "test_loss": float(loss), "timings": timings}))
