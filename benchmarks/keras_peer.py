"""The articles' stack as a peer: seed 002's convolutional autoencoder in Keras 3 +
TensorFlow (CPU), trained as a denoising autoencoder and used as an encoder.

Run by ``benchmarks/speed.py`` in a subprocess (TensorFlow and PyTorch each want the
cores to themselves); needs the optional extra: ``pip install -e ".[bench]"``.

    python benchmarks/keras_peer.py DATA.npz OUT_DIR --epochs 3 --batch 128

``DATA.npz`` holds ``train`` and ``query`` (``uint8 (n, 28, 28, 1)``). Prints one JSON
object: per-epoch training seconds and losses, encoding seconds, and writes the codes of
both sets to ``OUT_DIR/{train,query}_codes.npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402


def articles_model():  # type: ignore[no-untyped-def]
    """Seed 002's model, layer for layer."""
    from keras import Model
    from keras.layers import Conv2D, Input, MaxPooling2D, UpSampling2D

    input_img = Input(shape=(28, 28, 1))
    x = Conv2D(16, (3, 3), activation="relu", padding="same")(input_img)
    x = MaxPooling2D((2, 2), padding="same")(x)
    x = Conv2D(8, (3, 3), activation="relu", padding="same")(x)
    x = MaxPooling2D((2, 2), padding="same")(x)
    x = Conv2D(8, (3, 3), activation="relu", padding="same")(x)
    encoded = MaxPooling2D((2, 2), padding="same", name="encoder")(x)
    x = Conv2D(8, (3, 3), activation="relu", padding="same")(encoded)
    x = UpSampling2D((2, 2))(x)
    x = Conv2D(8, (3, 3), activation="relu", padding="same")(x)
    x = UpSampling2D((2, 2))(x)
    x = Conv2D(16, (3, 3), activation="relu")(x)
    x = UpSampling2D((2, 2))(x)
    decoded = Conv2D(1, (3, 3), activation="sigmoid", padding="same")(x)
    autoencoder = Model(input_img, decoded)
    autoencoder.compile(optimizer="adam", loss="mse")
    encoder = Model(inputs=autoencoder.input, outputs=autoencoder.get_layer("encoder").output)
    return autoencoder, encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--encode-batch", type=int, default=1024)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    data = np.load(args.data)
    x_train = data["train"].astype("float32") / 255.0
    x_query = data["query"].astype("float32") / 255.0
    rng = np.random.default_rng(args.seed)
    # The articles' denoising set-up: noisy inputs drawn once, clean targets.
    noisy = np.clip(x_train + args.noise * rng.standard_normal(x_train.shape, dtype=np.float32),
                    0.0, 1.0)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.start = 0.0

        def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):  # type: ignore[no-untyped-def]
            self.seconds.append(time.perf_counter() - self.start)

    autoencoder, encoder = articles_model()
    timer = EpochTimer()
    hist = autoencoder.fit(noisy, x_train, epochs=args.epochs, batch_size=args.batch,
                           shuffle=True, verbose=0, callbacks=[timer])
    encoder.predict(x_query[:args.encode_batch], batch_size=args.encode_batch, verbose=0)
    encode_seconds = []
    for _ in range(3):
        t = time.perf_counter()
        train_codes = encoder.predict(x_train, batch_size=args.encode_batch, verbose=0)
        encode_seconds.append(time.perf_counter() - t)
    query_codes = encoder.predict(x_query, batch_size=args.encode_batch, verbose=0)
    os.makedirs(args.out, exist_ok=True)
    # Keras codes are (n, 4, 4, 8) channels-last; flatten as the articles do.
    np.save(os.path.join(args.out, "train_codes.npy"),
            train_codes.reshape(len(train_codes), -1).astype(np.float32))
    np.save(os.path.join(args.out, "query_codes.npy"),
            query_codes.reshape(len(query_codes), -1).astype(np.float32))
    print(json.dumps({
        "n_train": len(x_train), "epochs": args.epochs, "batch": args.batch,
        "epoch_seconds": timer.seconds, "loss": [float(v) for v in hist.history["loss"]],
        "encode_seconds": encode_seconds, "encode_batch": args.encode_batch,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }))


if __name__ == "__main__":
    main()
