"""The ``tiny`` base: a 2-layer Llama + tiny CLIP vision tower built from configs, with a tokenizer built here.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the training texts (prompts + targets), with
digits split one per token so box coordinates stay learnable. It is saved with every checkpoint, so
``AutoProcessor`` / ``AutoModelForImageTextToText`` reload it like any llava-hf model.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from pancapchain.config import TinyModelConfig
from pancapchain.constants import BOX_CLOSE, BOX_OPEN, IMAGE_TOKEN, LOC_TOKENS

# The paper's conversation format (vicuna_v1, as used by ASMv2/PancapChain):
#   "<system> USER: <image>\n<prompt> ASSISTANT: <answer></s>"
# A system message in `messages` replaces the default system text.
VICUNA_CHAT_TEMPLATE = (
    "{%- set default_system = 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set sys = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set sys = default_system -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{ sys }}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{ ' USER: ' }}{%- else -%}{{ ' ASSISTANT: ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
# Box delimiters and location tokens are ordinary added tokens (not "special"), so decoding with
# skip_special_tokens keeps them. The <loc_i> tokens are only added for the ``bins`` box format.
TEXT_TOKENS = [BOX_OPEN, BOX_CLOSE]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024, loc_tokens: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts in the same order).

    ``loc_tokens``: add one token per ``<loc_i>`` location bin (the ``bins`` box format).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    added = TEXT_TOKENS + (list(LOC_TOKENS) if loc_tokens else [])
    tok.train_from_iterator(list(texts) + TEXT_TOKENS, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in added])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        add_bos_token=True,
    )
    fast.chat_template = VICUNA_CHAT_TEMPLATE
    return fast


def build_processor(tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig) -> LlavaProcessor:
    """LLaVA "pad" preprocessing: pad to a centered square with the mean color, then resize (no crop)."""
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        chat_template=VICUNA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, cfg: TinyModelConfig) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA whose vocabulary matches ``tokenizer`` (seeded)."""
    import torch

    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_hidden_size * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
    )
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    if cfg.vision_position_init == "sincos":
        tower = model.model.vision_tower
        embeddings = getattr(tower, "vision_model", tower).embeddings.position_embedding  # layout differs by release
        with torch.no_grad():
            embeddings.weight.copy_(sincos_2d(cfg.image_size // cfg.patch_size, cfg.vision_hidden_size))
    elif cfg.vision_position_init != "random":
        raise ValueError(f"vision_position_init must be random or sincos, not {cfg.vision_position_init!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def sincos_2d(grid: int, dim: int, amplitude: float = 0.5):
    """(1 + grid*grid, dim) position table: row 0 (CLS) zeros, then per patch (row-major) sin/cos of its row in
    the first half of the channels and of its column in the second half, at geometric frequencies."""
    import torch

    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(values):  # (grid*grid,) -> (grid*grid, 2*quarter)
        angles = values.flatten()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.zeros(1 + grid * grid, dim)
    table[1:, : 2 * quarter] = encode(rows)
    table[1:, 2 * quarter : 4 * quarter] = encode(cols)
    return amplitude * table
