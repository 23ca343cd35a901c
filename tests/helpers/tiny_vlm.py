"""A tiny, randomly initialised LLaVA model directory for the ``local-vision`` tests.

:func:`build_tiny_vlm` writes a complete Hugging Face model directory (config, safetensors weights,
tokenizer, image processor, processor config and chat template) that loads through ``AutoProcessor`` and
``AutoModelForImageTextToText`` exactly as a user's downloaded LLaVA / SmolVLM directory does.  Everything
is built locally (nothing is downloaded): the tokenizer is a word-level ``tokenizers`` model over a small
vocabulary, the vision tower a one-layer CLIP, the language model a one-layer Llama, with random weights
from ``torch.manual_seed(0)``.  The answers are noise, but every step of the real pipeline runs: chat
template, image preprocessing, image-token expansion, vision features merged into the text embeddings,
generation and decoding.  The directory is well under a megabyte and builds in about a second.
"""

from __future__ import annotations

from pathlib import Path

#: Pixel size of the (square) images the vision tower sees; with PATCH_SIZE it fixes the image tokens.
IMAGE_SIZE = 32
#: CLIP patch size: (32 / 8) ** 2 = 16 patches, i.e. 16 ``<image>`` tokens per image after expansion.
PATCH_SIZE = 8
#: The placeholder token that the processor expands to one token per image patch.
IMAGE_TOKEN = "<image>"

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]
WORDS = [
    # roles used by the chat template
    "system", "user", "assistant",
    # answers and words of typical questions about an image
    "yes", "no", "what", "which", "is", "are", "there", "the", "a", "an", "this", "that", "in", "on", "of",
    "image", "picture", "photo", "color", "colour", "shape", "object", "describe", "how", "many", "one", "two",
    "three", "word", "answer", "short", "only", "you", "see", "do", "does", "it", "red", "green", "blue",
    "white", "black", "yellow", "square", "circle", "triangle", "background", "and", "or", "with", "please",
    "helpful", "assistant", "be", "brief",
    # punctuation (the Whitespace pre-tokenizer splits it off words)
    ":", "?", ".", ",", "!", "'", "-",
]  # fmt: skip

#: A minimal LLaVA-1.5-style template: "SYSTEM: ...\nUSER: <image> question\nASSISTANT:".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] | upper }}:"
    "{%- if message['content'] is string %} {{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' %} " + IMAGE_TOKEN + "{%- elif part['type'] == 'text' %} {{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif %}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}ASSISTANT:{% endif -%}"
)


def _tokenizer():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *WORDS]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # Special tokens are matched before normalization and pre-tokenization, so "<image>" stays one token.
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_vlm(directory: Path) -> Path:
    """Write a tiny random LLaVA model directory into ``directory`` (created if needed) and return it."""
    import torch
    import transformers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar in test output
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-1,
        # "default" drops CLIP's CLS token, so the image features are exactly the patches.
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" then removes again
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------ custom-code (moondream)

_CUSTOM_CONFIG_PY = '''
from transformers import PretrainedConfig


class TinyQueryConfig(PretrainedConfig):
    model_type = "tiny-query"
'''

_CUSTOM_MODELING_PY = '''
import torch
from transformers import PreTrainedModel

from .configuration_tiny_query import TinyQueryConfig

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
          "black": (0, 0, 0)}


class TinyQueryModel(PreTrainedModel):
    """moondream2-style custom code: query(image, question) returns {"answer": ...}, no generate()."""

    config_class = TinyQueryConfig

    def __init__(self, config):
        super().__init__(config)
        self.gain = torch.nn.Parameter(torch.ones(3))
        self.questions = []
        self.post_init()

    def query(self, image, question, settings=None):
        self.questions.append(question)
        mean = torch.tensor(image.resize((1, 1)).getpixel((0, 0)), dtype=torch.float32) * self.gain.float()
        name = min(COLORS, key=lambda c: float(((mean - torch.tensor(COLORS[c], dtype=torch.float32)) ** 2).sum()))
        return {"answer": " " + name + " "}
'''


def build_tiny_custom_vlm(directory: Path) -> Path:
    """Write a moondream2-style custom-code model directory (``auto_map`` + ``query()``) into ``directory``.

    Its ``query`` answers with the name of the image's mean colour, so the answer is checkable; loading it
    runs transformers' ``trust_remote_code`` path from the directory itself (nothing is downloaded).
    """
    import json

    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_tiny_query.py").write_text(_CUSTOM_CONFIG_PY)
    (directory / "modeling_tiny_query.py").write_text(_CUSTOM_MODELING_PY)
    config = {
        "model_type": "tiny-query",
        "architectures": ["TinyQueryModel"],
        "auto_map": {
            "AutoConfig": "configuration_tiny_query.TinyQueryConfig",
            "AutoModelForCausalLM": "modeling_tiny_query.TinyQueryModel",
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file({"gain": torch.ones(3)}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
