"""UniFashion phase 1 on tiny random models: the Q-Former on transformers' BLIP-2 classes, the LLM branch,
the objectives against hand computations, frozen towers, captioning metrics, and a CLI run."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from transformers import Blip2Config, Blip2ForImageTextRetrieval

from fashion_vl.cli.eval import evaluate
from fashion_vl.cli.train import train
from fashion_vl.lit.unifashion_phase1 import UniFashionPretrainModule
from fashion_vl.losses import (
    CaptionLoss,
    ItgLoss,
    MultiQueryContrastiveLoss,
    QueryItcLoss,
    QueryItmLoss,
    StepContext,
)
from fashion_vl.losses.itc import max_over_queries
from fashion_vl.losses.itm import mine_negatives
from fashion_vl.metrics.captioning import caption_scores, meteor, tokenize
from fashion_vl.metrics.retrieval import best_positive_ranks, sample100_recall
from fashion_vl.models.checkpoint import CheckpointMismatchError
from fashion_vl.models.outputs import ImageTextEncoding
from fashion_vl.models.unifashion import FrozenViT, LanguageModel, UniFashion, build_qformer
from fashion_vl.optim import param_groups
from tests.conftest import compose_config

QFORMER = dict(
    vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    max_position_embeddings=64, encoder_hidden_size=32,
)  # fmt: skip
LLAMA = dict(
    vocab_size=1024, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256,
)  # fmt: skip
QUERIES = 8


def tiny_net(tokenizer: str, lora: dict | None = None, llm: bool = True) -> UniFashion:
    vit = FrozenViT(
        "eva_giant_patch14_clip_224",
        img_size=56,
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
    )
    qformer = build_qformer(
        num_query_tokens=QUERIES,
        embed_dim=32,
        bos_token_id=1023,
        llm_hidden_size=48 if llm else None,
        **QFORMER,
    )
    lm = (
        LanguageModel(name="tiny", pretrained=False, tokenizer=tokenizer, lora=lora, **LLAMA) if llm else None
    )
    return UniFashion(vit, qformer, lm)


def fake_batch(b: int = 4, length: int = 9, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (b, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {
        "image": torch.randn(b, 3, 56, 56, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "product_id": torch.arange(b) + 100,
        "text": [
            "red silk dress",
            "navy wool coat with buttons",
            "black leather boots",
            "white cotton shirt",
        ][:b],
    }


def lit_module(net: UniFashion) -> UniFashionPretrainModule:
    objectives = {
        "itc": QueryItcLoss(MultiQueryContrastiveLoss()),
        "itm": QueryItmLoss("argmax"),
        "itg": ItgLoss(),
        "caption": CaptionLoss(["Describe the image.", "What is this?"]),
    }
    weights = {"itc": 2.0, "itm": 1.0, "itg": 1.0, "caption": 1.0 if net.llm is not None else 0.0}
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    return UniFashionPretrainModule(net, objectives, weights, optimizer)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def tokenizer_dir(synth_dir: Path) -> str:
    return str(synth_dir / "tokenizer")


def test_frozen_parts_get_no_gradient_and_stay_identical_after_a_step(tokenizer_dir: str) -> None:
    torch.manual_seed(0)
    net = tiny_net(tokenizer_dir)
    lit = lit_module(net)
    lit.train()
    assert not net.image_encoder.training and not net.llm.training and net.qformer.training
    frozen = {f"image_encoder.{k}": v.clone() for k, v in net.image_encoder.state_dict().items()}
    frozen |= {f"llm.{k}": v.clone() for k, v in net.llm.state_dict().items()}
    trainable_before = net.qformer.query_tokens.detach().clone()
    optimizer = lit.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for module in (net.image_encoder, net.llm):
        assert all(not p.requires_grad and id(p) not in in_optimizer for p in module.parameters())
    assert {id(p) for p in net.qformer.parameters()} <= in_optimizer

    batch = fake_batch()
    enc = net.encode_pair(batch["image"], batch["input_ids"], batch["attention_mask"])
    step = StepContext(torch.Generator().manual_seed(0), enc)
    weights = lit.objectives.sampler(0)  # sum mode: every objective and its weight
    loss = sum(w * lit.objectives[n](net, batch, step)["loss"] for n, w in weights)
    loss.backward()
    assert all(p.grad is None for p in [*net.image_encoder.parameters(), *net.llm.parameters()])
    assert net.qformer.llm_proj.weight.grad is not None and net.qformer.itm_head.weight.grad is not None
    assert net.qformer.ln_vision.weight.grad is not None  # ln_vision trains, as in LAVIS
    optimizer.step()
    state = {f"image_encoder.{k}": v for k, v in net.image_encoder.state_dict().items()}
    state |= {f"llm.{k}": v for k, v in net.llm.state_dict().items()}
    assert all(torch.equal(v, state[k]) for k, v in frozen.items())
    assert not torch.equal(trainable_before, net.qformer.query_tokens)


def test_lora_puts_only_adapters_and_the_qformer_in_the_optimizer(tokenizer_dir: str) -> None:
    net = tiny_net(tokenizer_dir, lora={"r": 4, "alpha": 8, "dropout": 0.05})
    groups = param_groups(net, lr=1e-4, weight_decay=0.05)
    names = {id(p): n for n, p in net.named_parameters()}
    chosen = [names[id(p)] for g in groups for p in g["params"]]
    llm = [n for n in chosen if n.startswith("llm.")]
    assert llm and all(".lora_A." in n or ".lora_B." in n for n in llm)
    assert not any("lm_head" in n for n in llm)  # every linear layer but the output head is adapted
    assert {n for n in chosen if not n.startswith("llm.")} == {
        n for n, _ in net.qformer.named_parameters(prefix="qformer")
    }
    assert "qformer.llm_proj.weight" in chosen and not any(n.startswith("image_encoder.") for n in chosen)
    net.train()
    assert net.llm.training and not net.image_encoder.training  # LoRA dropout is active in training


def test_public_blip2_state_dict_loads_with_no_missing_or_unexpected_keys(tmp_path: Path) -> None:
    """A transformers Blip2ForImageTextRetrieval state dict (the public checkpoint's names) fills every
    shared key; only UniFashion's additions keep their initialisation; and the two models then agree."""
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        qformer_config={**QFORMER, "use_qformer_text_input": True},
        num_query_tokens=QUERIES,
        image_text_hidden_size=32,
    )  # fmt: skip
    public = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        public.query_tokens.normal_(0.0, 0.5)  # transformers initialises the queries to zeros
    ours = build_qformer(
        num_query_tokens=QUERIES, embed_dim=32, bos_token_id=1023, llm_hidden_size=48, **QFORMER
    )
    ours.eval()
    fresh = ours.load_blip2_state_dict(public.state_dict(), source="test")
    assert all(k.split(".")[0] in ("temp", "itg_head", "llm_proj") for k in fresh) and fresh
    state = ours.state_dict()
    for key, value in public.state_dict().items():
        target = key.replace("vision_model.post_layernorm.", "ln_vision.")
        if not key.startswith("vision_model.") or target != key:
            assert torch.equal(state[target], value), key

    public.save_pretrained(tmp_path / "blip2")  # by name, through fashion_vl.hub (a local folder here)
    loaded = build_qformer(
        name=str(tmp_path / "blip2"),
        pretrained=True,
        num_query_tokens=QUERIES,
        embed_dim=32,
        bos_token_id=1023,
    )
    assert torch.equal(loaded.query_tokens, public.query_tokens)

    pixels = torch.randn(2, 3, 28, 28)
    ids = torch.tensor([[2, 11, 12, 13, 3], [2, 21, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        tokens = public.vision_model(pixel_values=pixels).last_hidden_state  # post_layernorm applied
        itm = public(
            pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True
        )
        itc = public(
            pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False
        )
        our_itm = ours.itm_logits(tokens, ids, mask)
        image = ours.project_image(ours.query_states(tokens))
        text = ours.project_text(ours.text_states(ids, mask))
    torch.testing.assert_close(our_itm, itm.logits_per_image)
    torch.testing.assert_close(max_over_queries(image, text), itc.logits_per_image)


def test_mismatched_checkpoint_is_a_clear_error() -> None:
    ours = build_qformer(num_query_tokens=QUERIES, embed_dim=32, bos_token_id=1023, **QFORMER)
    state = ours.state_dict()
    state.pop("itm_head.weight")
    state["unknown.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"missing \['itm_head.weight'\].*unexpected \['unknown.weight'\]"):
        ours.load_blip2_state_dict(state)


def tiny_vit(seed: int, **kwargs) -> FrozenViT:
    torch.manual_seed(seed)
    return FrozenViT("eva_giant_patch14_clip_224", img_size=28, patch_size=14, embed_dim=32, depth=1,
                     num_heads=2, mlp_ratio=2.0, **kwargs)  # fmt: skip


def test_frozen_vit_takes_the_phase1_runs_weights_whatever_the_seed(tmp_path: Path) -> None:
    phase1 = tiny_vit(seed=0)
    ckpt = tmp_path / "phase1.ckpt"
    state = {f"net.image_encoder.{k}": v for k, v in phase1.state_dict().items()}
    torch.save({"state_dict": {**state, "net.qformer.query_tokens": torch.zeros(1, 8, 64)}}, ckpt)
    assert not torch.equal(tiny_vit(seed=1).trunk.pos_embed, phase1.trunk.pos_embed)  # the trap
    loaded = tiny_vit(seed=1, init_from=str(ckpt))
    for (name, a), b in zip(phase1.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.weights_source == f"the run checkpoint {ckpt} (net.image_encoder.*)"


def test_frozen_vit_stays_as_built_from_a_checkpoint_without_vit_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "converted.pth"
    torch.save({"query_tokens": torch.zeros(1, 8, 64)}, ckpt)  # a converted Q-Former: no ViT inside
    built = tiny_vit(seed=3)
    loaded = tiny_vit(seed=3, init_from=str(ckpt))
    assert torch.equal(built.trunk.pos_embed, loaded.trunk.pos_embed)
    assert built.weights_source == "a random initialisation (pretrained=false)"
    assert loaded.weights_source == f"a random initialisation (pretrained=false); {ckpt} holds no ViT weights"


def test_frozen_vit_says_once_which_weights_it_runs_with(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="fashion_vl.models.unifashion.vision"):
        tiny_vit(seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "fashion_vl.models.unifashion.vision"]
    assert lines == ["frozen ViT eva_giant_patch14_clip_224: a random initialisation (pretrained=false)"]


def test_frozen_vit_from_a_run_at_another_image_size_resamples_the_position_grid(tmp_path: Path) -> None:
    """The try-on demo reads 64 px, phase 1 112 px: the run's ViT is loaded with its position embeddings
    interpolated to this grid (LAVIS's ``interpolate_pos_embed``), every other weight as is."""
    from timm.layers import resample_abs_pos_embed

    phase1 = tiny_vit(seed=0)  # 28 px, patch 14: a 2x2 grid
    ckpt = tmp_path / "phase1.ckpt"
    torch.save({"state_dict": {f"net.image_encoder.{k}": v for k, v in phase1.state_dict().items()}}, ckpt)
    torch.manual_seed(1)
    larger = FrozenViT("eva_giant_patch14_clip_224", img_size=56, patch_size=14, embed_dim=32, depth=1,
                       num_heads=2, mlp_ratio=2.0, init_from=str(ckpt))  # fmt: skip
    assert larger.trunk.pos_embed.shape == (1, 1 + 16, 32)
    expected = resample_abs_pos_embed(phase1.trunk.pos_embed, [4, 4], [2, 2], num_prefix_tokens=1)
    torch.testing.assert_close(larger.trunk.pos_embed, expected)
    torch.testing.assert_close(larger.trunk.pos_embed[:, 0], phase1.trunk.pos_embed[:, 0])  # [CLS] kept
    assert torch.equal(larger.trunk.patch_embed.proj.weight, phase1.trunk.patch_embed.proj.weight)
    assert larger(torch.randn(1, 3, 56, 56)).shape == (1, 17, 32)


def test_frozen_vit_from_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    other = FrozenViT("eva_giant_patch14_clip_224", img_size=28, patch_size=14, embed_dim=16, depth=1,
                      num_heads=2, mlp_ratio=2.0)  # fmt: skip
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"net.image_encoder.{k}": v for k, v in other.state_dict().items()}}, ckpt)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)frozen image encoder.*shape mismatches"):
        tiny_vit(seed=0, init_from=str(ckpt))


@pytest.mark.parametrize(
    ("experiment", "vit_key", "qformer_key"),
    [
        ("demo_unifashion_phase2", "model.image_encoder", "model.qformer"),
        ("unifashion_phase2_fashioniq", "model.image_encoder", "model.qformer"),
        ("demo_unifashion_phase2_tryon", "model.query_encoder.unifashion.image_encoder",
         "model.query_encoder.unifashion.qformer"),
    ],
)  # fmt: skip
def test_phase2_configs_take_the_vit_from_the_qformers_run(
    tmp_path: Path, experiment: str, vit_key: str, qformer_key: str
) -> None:
    from omegaconf import OmegaConf

    cfg = compose_config(
        "train", [f"experiment={experiment}", f"{qformer_key}.init_from=/runs/p1.ckpt"], tmp_path
    )
    assert OmegaConf.select(cfg, f"{vit_key}.init_from") == "/runs/p1.ckpt"


def test_itc_max_over_queries_equals_a_brute_force_loop() -> None:
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 3, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    temperature = 0.07
    sim = torch.zeros(5, 5)
    for i in range(5):
        for t in range(5):
            sim[i, t] = max(float(image[i, q] @ text[t]) for q in range(3))
    torch.testing.assert_close(max_over_queries(image, text), sim)
    for smoothing in (0.0, 0.1):
        expected = 0.0
        for logits in (sim / temperature, sim.T / temperature):
            for row in range(5):
                logp = logits[row].log_softmax(dim=0)
                expected += -(1 - smoothing) * logp[row] - smoothing * logp.mean()
        expected /= 10
        loss = MultiQueryContrastiveLoss(label_smoothing=smoothing)(image, text, temperature)
        torch.testing.assert_close(loss, torch.tensor(float(expected)))


def test_itm_hard_negatives_are_the_hand_computed_ones() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.2, 0.9, 0.95, 0.0], [0.3, 0.3, 0.9, 0.1]])
    rows, columns = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3, 1])  # column 3: product 1 again
    assert mine_negatives(sim, rows, columns, "argmax").tolist() == [1, 2, 0]
    # sampling draws from the softmax over the other products' columns only
    g = torch.Generator().manual_seed(0)
    draws = mine_negatives(sim.repeat(4000, 1) * 10, rows.repeat(4000), columns, "sample", g).view(4000, 3)
    for r in range(3):
        expected = (sim[r] * 10).masked_fill(rows[r] == columns, float("-inf")).softmax(0)
        observed = torch.bincount(draws[:, r], minlength=4).float() / 4000
        assert observed[rows[r] == columns].sum() == 0
        torch.testing.assert_close(observed, expected, atol=0.03, rtol=0)
    # uniform: every other product's column equally likely, whatever the similarities
    draws = mine_negatives(sim.repeat(4000, 1) * 10, rows.repeat(4000), columns, "uniform", g).view(4000, 3)
    for r in range(3):
        other = (rows[r] != columns).float()
        observed = torch.bincount(draws[:, r], minlength=4).float() / 4000
        torch.testing.assert_close(observed, other / other.sum(), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="ITM negatives"):
        mine_negatives(sim, rows, columns, "hardest")


class RecordingQFormer(torch.nn.Module):
    """Stands in for the Q-Former: records the ITM pairs it is asked to score."""

    def __init__(self) -> None:
        super().__init__()
        self.temp = torch.nn.Parameter(torch.tensor(0.1))
        self.pairs = None

    def itm_logits(self, tokens, ids, mask, query_tokens=None):
        self.pairs = (tokens, ids, mask)
        return torch.zeros(ids.shape[0], 2, requires_grad=True)


def test_itm_pairs_each_image_and_text_with_its_hardest_negative() -> None:
    # image i's queries point at text (i + 1) % 3 after its own text; texts are one-hot
    text = torch.eye(3)
    image = torch.stack([torch.stack([text[i], 0.5 * text[(i + 1) % 3]]) for i in range(3)])  # [3, 2, 3]
    tokens = torch.arange(3.0)[:, None, None].expand(3, 2, 4)  # token value = image index
    ids = torch.tensor([[2, 10, 3], [2, 11, 3], [2, 12, 3]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "product_id": torch.arange(3)}
    net = torch.nn.Module()
    net.qformer = RecordingQFormer()
    enc = ImageTextEncoding(tokens, None, image, text)
    out = QueryItmLoss("argmax")(net, batch, StepContext(torch.Generator(), enc))
    pair_tokens, pair_ids, _ = net.qformer.pairs
    # pos pairs, then (text i, its hardest image), then (image i, its hardest text)
    # sim[i, t] = 1 if t == i, 0.5 if t == i+1: image i's negative text is i+1; text t's negative image is t-1
    assert pair_tokens[:, 0, 0].tolist() == [0, 1, 2, 2, 0, 1, 0, 1, 2]
    assert pair_ids[:, 1].tolist() == [10, 11, 12, 10, 11, 12, 11, 12, 10]
    assert math.isclose(float(out["loss"].detach()), math.log(2), rel_tol=1e-6)


def test_itg_decoder_is_causal_and_queries_ignore_the_text(tokenizer_dir: str) -> None:
    torch.manual_seed(0)
    net = tiny_net(tokenizer_dir, llm=False).eval()
    batch = fake_batch()
    tokens = net.image_tokens(batch["image"])
    captured = []
    hook = net.qformer.qformer.register_forward_hook(lambda m, i, o: captured.append(o.last_hidden_state))
    with torch.no_grad():
        logits = net.qformer.decoder_logits(tokens, batch["input_ids"], batch["attention_mask"])
        changed = batch["input_ids"].clone()
        changed[:, 5:] = 7
        logits_changed = net.qformer.decoder_logits(tokens, changed, batch["attention_mask"])
        queries = net.qformer.query_states(tokens)
    hook.remove()
    torch.testing.assert_close(logits[:, :5], logits_changed[:, :5])
    assert not torch.allclose(logits[:, 5:], logits_changed[:, 5:])
    torch.testing.assert_close(captured[0][:, :QUERIES], queries, atol=1e-5, rtol=1e-5)
    assert logits.shape == (4, 9, 1024)


def test_generate_returns_strings(tokenizer_dir: str) -> None:
    torch.manual_seed(0)
    net = tiny_net(tokenizer_dir).eval()
    images = fake_batch(3)["image"]
    captions = net.caption(images, prompt="Describe the image.", max_new_tokens=4)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    answers = net.caption(images, prompt=["a", "describe the dress", "b c d"], max_new_tokens=3, num_beams=2)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_caption_loss_targets_only_the_text_and_eos(tokenizer_dir: str) -> None:
    net = tiny_net(tokenizer_dir)
    llm = net.llm
    rows, labels = llm._token_rows(["describe it"], ["red dress"])
    bos, eos, _ = llm.special_ids
    target = llm.tokenizer("red dress", add_special_tokens=False)["input_ids"]
    prompt = llm.tokenizer("describe it", add_special_tokens=False)["input_ids"]
    assert rows[0] == [bos, *prompt, *target, eos]
    assert labels[0] == [-100] * (1 + len(prompt)) + [*target, eos]
    prefix = torch.randn(1, QUERIES, 48)
    loss = llm.caption_loss(prefix, ["describe it"], ["red dress"])
    # the same loss by hand: next-token CE at the positions before each target token
    embeds, mask = llm._embed_rows(prefix, rows, left_pad=False)
    logits = llm.model(inputs_embeds=embeds, attention_mask=mask).logits[0]
    start = QUERIES + 1 + len(prompt)
    expected = F.cross_entropy(logits[start - 1 : start - 1 + len(target) + 1], torch.tensor([*target, eos]))
    torch.testing.assert_close(loss, expected)


def test_caption_metrics_on_hand_computed_cases() -> None:
    hyp, ref = "A man rides a horse.", "a man on a horse"
    scores = caption_scores([hyp], [[ref]])
    # unigram precision 4/5, bigram 2/4, equal lengths: BLEU-1 0.8, BLEU-2 sqrt(0.8 * 0.5)
    assert math.isclose(scores["bleu_1"], 0.8, rel_tol=1e-6)
    assert math.isclose(scores["bleu_2"], math.sqrt(0.4), rel_tol=1e-6)
    # LCS "a man a horse" = 4 of 5 both ways: ROUGE-L F = 0.8 for any beta
    assert math.isclose(scores["rouge_l"], 0.8, rel_tol=1e-6)
    # METEOR: 4 matches, P = R = 0.8, Fmean = 0.8; 2 chunks -> penalty 0.5 * (2/4)^3 = 0.0625
    assert math.isclose(meteor([tokenize(hyp)], [[tokenize(ref)]]), 0.8 * (1 - 0.0625), rel_tol=1e-6)
    assert tokenize("Slim-fit, blue JEANS!") == "slim fit blue jeans"
    # identical captions, no n-gram shared between the two images: BLEU-4 1, CIDEr-D 10 (cosine 1, x10)
    perfect = caption_scores(["red silk midi dress", "black leather ankle boots"],
                             [["red silk midi dress"], ["black leather ankle boots"]])  # fmt: skip
    assert math.isclose(perfect["bleu_4"], 1.0, rel_tol=1e-6) and math.isclose(
        perfect["cider"], 10.0, rel_tol=1e-6
    )
    assert math.isclose(perfect["rouge_l"], 1.0) and perfect["meteor"] > 0.99


def test_retrieval_ranks_multi_vector_images_by_their_best_query() -> None:
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(6, 3, 4, generator=g), dim=-1)
    texts = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    image_ids, text_ids = torch.tensor([0, 0, 1, 2, 3, 4]), torch.arange(5)
    sim = torch.stack([torch.stack([(images[i] @ texts[t]).max() for t in range(5)]) for i in range(6)])
    for queries, gallery, q_ids, g_ids, scores in (
        (images, texts, image_ids, text_ids, sim),
        (texts, images, text_ids, image_ids, sim.T),
    ):
        ranks = best_positive_ranks(queries, gallery, q_ids, g_ids, chunk_size=2)
        for row in range(scores.shape[0]):
            positive = g_ids == q_ids[row]
            best = scores[row][positive].max()
            assert ranks[row] == 1 + ((scores[row] >= best) & ~positive).sum()
    values = sample100_recall(
        images, image_ids, torch.zeros(6), texts, text_ids, torch.zeros(5), num_negatives=3
    )
    assert set(values) >= {"i2t_r@1", "t2i_r@10", "rsum"}


def test_demo_phase1_trains_three_steps_and_writes_metrics(tmp_path: Path, synth_dir: Path) -> None:
    overrides = [
        "experiment=demo_unifashion_phase1", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "image_size=56", "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
        "+trainer.limit_val_batches=2", "lit.caption_eval.max_images=4", "lit.caption_eval.max_new_tokens=4",
        "logger=csv", "print_config=false", "~callbacks.rich_progress_bar", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    metrics, _ = train(compose_config("train", overrides, tmp_path, synth_dir))
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["global_step"] == 3 and payload["metrics"] == metrics
    assert {"train/itc_loss", "train/itm_loss", "train/itg_loss", "train/caption_loss"} <= set(metrics)
    assert {"val/full/rsum", "val/sample100/rsum", "val/caption/bleu_4", "val/caption/cider"} <= set(metrics)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["fvl_config"]["experiment_name"] == "demo_unifashion_phase1"


@pytest.mark.slow
def test_demo_phase1_learns_to_caption_and_retrieve(tmp_path: Path, synth_dir: Path) -> None:
    """The learning check: after the demo run, val BLEU-4, CIDEr and retrieval beat the untrained
    model's (the same initialisation: both runs seed before building)."""
    quiet = ["print_config=false", "data.num_workers=0"]
    eval_cfg = compose_config(
        "eval", ["experiment=demo_unifashion_phase1", "split=val", *quiet], tmp_path / "untrained", synth_dir
    )
    untrained, _ = evaluate(eval_cfg)
    overrides = ["experiment=demo_unifashion_phase1", "logger=csv", "~callbacks.rich_progress_bar", *quiet]
    train_cfg = compose_config(
        "train", [*overrides, "trainer.enable_progress_bar=false"], tmp_path / "trained", synth_dir
    )
    trained, _ = train(train_cfg)
    for key in ("val/caption/bleu_4", "val/caption/cider", "val/full/rsum"):
        assert trained[key] > untrained[key], (key, trained[key], untrained[key])


def test_compile_units_give_the_eager_encodings(tokenizer_dir: str) -> None:
    from fashion_vl.utils.speed import compile_units

    torch.manual_seed(0)
    net = tiny_net(tokenizer_dir, llm=False).eval()
    batch = fake_batch()
    with torch.no_grad():
        eager = net.encode_image(batch["image"])
        eager_text = net.encode_text(batch["input_ids"], batch["attention_mask"])
    assert compile_units(net, backend="aot_eager") == ["image_encoder", "qformer.qformer"]
    with torch.no_grad():
        torch.testing.assert_close(net.encode_image(batch["image"]), eager, rtol=1e-4, atol=1e-5)
        compiled_text = net.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(compiled_text, eager_text, rtol=1e-4, atol=1e-5)


def test_unifashion_weight_decay_exempts_every_parameter_below_two_dimensions(tokenizer_dir: str) -> None:
    """LAVIS's rule: biases, every norm (``layernorm``, ``ln_vision``: not caught by BERT's names) and
    the temperature get no decay, in the fast group too; FashionViL's modules keep the name rule."""
    lit = lit_module(tiny_net(tokenizer_dir))
    groups = {g["name"]: g for g in lit.configure_optimizers()["optimizer"].param_groups}
    names = {id(p): n for n, p in lit.named_parameters()}

    def members(*keys: str) -> set[str]:
        return {names[id(p)] for key in keys for p in groups.get(key, {"params": []})["params"]}

    no_decay, decayed = members("base_no_decay", "fast_no_decay"), members("base", "fast")
    assert all(groups[k]["weight_decay"] == 0 for k in ("base_no_decay", "fast_no_decay") if k in groups)
    assert "net.qformer.ln_vision.weight" in no_decay and "net.qformer.temp" in no_decay
    assert any(n.endswith("layernorm.weight") for n in no_decay)
    assert all(lit.get_parameter(n).ndim >= 2 for n in decayed)
    assert all(lit.get_parameter(n).ndim < 2 for n in no_decay)
    assert "net.qformer.query_tokens" in decayed  # 3-d: decayed, as in LAVIS
    # FashionViL's name rule is unchanged: a 1-d norm weight not named LayerNorm is decayed there
    layer = torch.nn.Module()
    layer.norm = torch.nn.LayerNorm(4)
    from fashion_vl.optim import param_groups

    default = {g["name"]: g["params"] for g in param_groups(layer, lr=1.0, weight_decay=0.1)}
    assert default["base"] == [layer.norm.weight] and default["base_no_decay"] == [layer.norm.bias]


def test_freeze_qformer_leaves_only_the_llm_bridge_training(tokenizer_dir: str) -> None:
    torch.manual_seed(0)
    base = tiny_net(tokenizer_dir)
    net = UniFashion(base.image_encoder, base.qformer, base.llm, freeze_qformer=True)
    lit = lit_module(net)
    lit.train()
    assert not net.qformer.training and net.qformer.llm_proj.training
    optimizer = lit.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    bridge = {id(p) for p in net.qformer.llm_proj.parameters()}
    assert {id(p) for p in net.qformer.parameters()} & in_optimizer == bridge
    before = {k: v.clone() for k, v in net.qformer.state_dict().items() if not k.startswith("llm_proj")}
    batch = fake_batch()
    enc = net.encode_pair(batch["image"], batch["input_ids"], batch["attention_mask"])
    out = lit.objectives["caption"](net, batch, StepContext(torch.Generator().manual_seed(0), enc))
    out["loss"].backward()
    optimizer.step()
    after = net.qformer.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert net.qformer.llm_proj.weight.grad is not None


def test_fvl_eval_writes_the_generated_captions_with_their_references(tmp_path: Path) -> None:
    from fashion_vl.cli.eval import write_captions
    from fashion_vl.metrics.captioning import CaptionScores

    class Captioner:
        test_captions = CaptionScores()

    assert write_captions(Captioner(), tmp_path / "none.json") is None  # captioned nothing: no file
    assert write_captions(object(), tmp_path / "none.json") is None  # not a captioning task
    Captioner.test_captions.update(["a red shirt", "a blue dress"], ["Red cotton shirt", ["x", "y"]])
    path = write_captions(Captioner(), tmp_path / "captions.json")
    assert json.loads(path.read_text()) == [
        {"caption": "a red shirt", "references": ["Red cotton shirt"]},
        {"caption": "a blue dress", "references": ["x", "y"]},
    ]
    assert not (tmp_path / "none.json").exists()
