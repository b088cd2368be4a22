"""Stand-in for the one TensorFlow function the PTUPCDR code uses: keras.preprocessing.sequence.pad_sequences
(defaults: truncating='pre', value=0; the code passes maxlen=20, padding='post'). Not part of dacdr."""
import types

import numpy as np


def pad_sequences(sequences, maxlen, padding="pre", truncating="pre", value=0, dtype="int32"):
    out = np.full((len(sequences), maxlen), value, dtype=dtype)
    for i, s in enumerate(sequences):
        s = np.asarray(s)[-maxlen:] if truncating == "pre" else np.asarray(s)[:maxlen]
        if len(s):
            if padding == "post":
                out[i, : len(s)] = s
            else:
                out[i, -len(s):] = s
    return out


keras = types.SimpleNamespace(preprocessing=types.SimpleNamespace(sequence=types.SimpleNamespace(pad_sequences=pad_sequences)))
