"""Load encoders trained elsewhere into keras_encoder layers.

- `from_torch_encoder_layer`: one `torch.nn.TransformerEncoderLayer`'s
  state dict -> an `EncoderBlock`.
- `load_hf_bert`: a Hugging Face BERT-family checkpoint directory
  (`config.json` + `model.safetensors`) -> a functional Keras model with
  sentence-transformers pooling, exportable to builtin-ops TFLite.
- `load_hf_modernbert`: the same for ModernBERT (rotary positions, local
  and global layers, GeGLU, bias-free pre-LN).
- `load_hf`: either of the two, chosen by the checkpoint's `model_type`.

Neither needs torch: weights are NumPy arrays (state dicts converted with
`{k: v.numpy() for k, v in module.state_dict().items()}`) or read from
safetensors files, one tensor at a time. Weights a loader has no place
for are reported (`unused="warn"`, `"error"` or `"ignore"`).

One module per source: `torch_layer`, `bert`, `modernbert` (each
Hugging Face family a `convert_backbone_config`, a `build_encoder` and a
`convert_weights`), with `checkpoint` the shared reader.
"""

from keras_encoder.convert._common import HF_ACTIVATIONS
from keras_encoder.convert.bert import load_hf_bert
from keras_encoder.convert.checkpoint import UNUSED_CHOICES
from keras_encoder.convert.hugging_face import SUPPORTED_MODEL_TYPES
from keras_encoder.convert.hugging_face import load_hf
from keras_encoder.convert.modernbert import load_hf_modernbert
from keras_encoder.convert.torch_layer import from_torch_encoder_layer

# Named as `keras_encoder.convert.SentencePooling` in README.md.
from keras_encoder.sentence_pooling import SentencePooling

__all__ = [
    "HF_ACTIVATIONS",
    "SUPPORTED_MODEL_TYPES",
    "UNUSED_CHOICES",
    "SentencePooling",
    "from_torch_encoder_layer",
    "load_hf",
    "load_hf_bert",
    "load_hf_modernbert",
]
