"""The tiny run that many tests train, defined once: scikit-learn's digits, fastnet-small, batches of 128 (a
second or two an epoch on 2 CPU cores). Tests add the keys they study to it."""

TINY = {"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 2, "train.batch_size": 128}

# The same as `fixedhead train` flags, without the epochs (each test says how many it needs).
TINY_FLAGS = ["--data", "digits", "--arch", "fastnet-small", "--batch-size", "128", "--quiet"]
