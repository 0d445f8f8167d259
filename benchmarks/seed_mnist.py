"""The seed tutorial's training script, as written, with two changes: its metric is corrected
('accuracy' instead of CategoricalAccuracy, which reports 0.0992 for a 98.8% model on integer labels),
and MNIST is read from a local mirror instead of ``datasets.mnist.load_data()`` (no internet here).
A final ``model.evaluate`` reports the test accuracy. Prints one JSON line: {"test_accuracy": ...}.

Run: ``python benchmarks/seed_mnist.py <mirror folder with the four .gz files>``
"""

import gzip
import json
import sys

import numpy as np
import tensorflow as tf
from tensorflow.keras import layers


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

# Training
num_epochs = 1
batch_size = 32
model.fit(train_x, train_y, batch_size=batch_size, shuffle=True, epochs=num_epochs)

loss, accuracy = model.evaluate(test_x, test_y, verbose=0)
print(json.dumps({"test_accuracy": float(accuracy), "test_loss": float(loss)}))
