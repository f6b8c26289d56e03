"""Hugging Face BERT as FashionViL's text encoder and fusion encoder."""

from __future__ import annotations

from transformers import BertConfig, BertModel

from fashion_vl.hub import load_pretrained


def build_bert(
    name: str = "bert-base-uncased",
    pretrained: bool = False,
    attn_implementation: str = "sdpa",
    add_pooling_layer: bool = True,
    config_key: str = "model.text_encoder.name",
    **config_overrides,
) -> BertModel:
    """A ``BertModel``: pretrained weights by hub name or local path, or random init.

    With ``pretrained: false`` the architecture is ``BertConfig()`` (whose defaults are
    bert-base-uncased: 12 layers, 768 hidden, vocab 30522) updated with ``config_overrides``, so a
    real-size model can be built offline and a tiny one is a few overrides away.
    """
    if pretrained:
        model = load_pretrained(
            BertModel.from_pretrained,
            name,
            what="text encoder (BERT)",
            config_key=config_key,
            attn_implementation=attn_implementation,
            add_pooling_layer=add_pooling_layer,
        )
        for key, value in config_overrides.items():
            if (
                key in {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"}
                and getattr(model.config, key) != value
            ):
                raise ValueError(
                    f"model.text_encoder.{key}={value} contradicts the pretrained '{name}' ({key}="
                    f"{getattr(model.config, key)}); drop the override or set pretrained=false"
                )
        return model
    config = BertConfig(attn_implementation=attn_implementation, **config_overrides)
    return BertModel(config, add_pooling_layer=add_pooling_layer)
