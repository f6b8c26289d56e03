"""Pre-training objectives on hand-made tensors, their mining across ranks, the sampler, the groups."""

from __future__ import annotations

import functools
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fashion_vl import losses as L
from fashion_vl.data.masking import IGNORE_INDEX
from fashion_vl.lit.objectives import TaskSampler
from fashion_vl.lit.pretrain import REFERENCE_TASK_WEIGHTS, PretrainModule
from fashion_vl.losses import StepContext
from fashion_vl.losses.itm import hardest_negatives, pair_texts
from fashion_vl.losses.mvc import dropout_positions
from fashion_vl.losses.pac import soft_cross_entropy
from fashion_vl.models.fashionvil import FashionViL
from fashion_vl.models.heads import CosineClassifier, ItmHead, MlmHead, MpfcHead
from tests.helpers.ports import free_port
from tests.test_models import tiny_fashionvil


class StandInTokenizer(nn.Module):
    """A frozen module with the VQ tokenizer's interface: images -> 7x7 codebook indices."""

    codebook_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 16, stride=16)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).flatten(2).argmax(1)


def pretrain_net() -> FashionViL:
    """The tiny FashionViL with the pre-training heads (20 attributes) and the stand-in tokenizer."""
    heads = {
        "itm": ItmHead,
        "pac": functools.partial(CosineClassifier.for_network, num_classes=20),
        "mlm": MlmHead,
        "mpfc": MpfcHead,
    }
    return tiny_fashionvil(image_tokenizer=StandInTokenizer(), heads=heads)


def fake_batch(b: int = 6, length: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 7:] = 0
    labels = torch.full((b, length), IGNORE_INDEX)
    labels[:, 2] = torch.randint(5, 100, (b,), generator=g)
    targets = torch.zeros(b, 20)
    targets[:-1, 3] = 0.5
    targets[:-1, 4] = 0.5
    patch = torch.zeros(b, 49, dtype=torch.bool)
    patch[:, 10:18] = True
    return {
        "image": torch.randn(b, 3, 112, 112, generator=g),
        "image_view1": torch.randn(b, 3, 112, 112, generator=g),
        "input_ids": torch.randint(5, 100, (b, length), generator=g),
        "attention_mask": mask,
        "mlm_input_ids": torch.randint(5, 100, (b, length), generator=g),
        "mlm_labels": labels,
        "patch_mask": patch,
        "attribute_targets": targets,
        "product_id": torch.arange(b) + 100,
    }


def test_hardest_negative_is_the_hand_computed_one() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.2, 0.9, 0.95, 0.0], [0.3, 0.3, 0.9, 0.1]])
    query_products = torch.tensor([1, 2, 3])
    gallery_products = torch.tensor([1, 2, 3, 1])  # column 3 is another image of product 1
    # row 0: col 0 and col 3 are positives -> best other is col 1 (0.8)
    # row 1: col 1 positive -> col 2 (0.95); row 2: col 2 positive -> cols 0/1 tie at 0.3 -> col 0
    assert hardest_negatives(sim, query_products, gallery_products).tolist() == [1, 2, 0]


def test_pair_texts_swaps_only_where_asked() -> None:
    image = F.normalize(torch.eye(3), dim=1)
    text = F.normalize(torch.tensor([[1.0, 0.9, 0], [0, 1.0, 0.3], [0, 0.2, 1.0]]), dim=1)
    ids = torch.tensor([[2, 10, 3, 0], [2, 11, 12, 3], [2, 13, 3, 0]])
    mask = (ids != 0).long()
    swap = torch.tensor([True, False, True])
    pair_ids, _ = pair_texts(image, text, ids, mask, torch.arange(3), swap)
    # image 0 scores 0 against texts 1 and 2: the tie goes to the lower index, text 1;
    # image 2 scores 0.29 against text 1 and 0 against text 0: text 1
    assert pair_ids.tolist() == [[2, 11, 12, 3], [2, 11, 12, 3], [2, 11, 12, 3]]
    swap = torch.tensor([False, False, False])
    pair_ids, _ = pair_texts(image, text, ids, mask, torch.arange(3), swap)
    assert torch.equal(pair_ids, ids)


def _mining_worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0 holds images/texts of products 0,1; rank 1 of products 2,3. Image 0's most similar
        # other text is product 3's, which only rank 1 has; texts of rank 1 are longer.
        image = torch.eye(4)[[0, 1]] if rank == 0 else torch.eye(4)[[2, 3]]
        text = F.normalize(
            torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0.5], [0, 0, 1.0, 0], [0.9, 0, 0, 1.0]]), dim=1
        )
        text = text[[0, 1]] if rank == 0 else text[[2, 3]]
        ids = (
            torch.tensor([[2, 10, 3], [2, 11, 3]])
            if rank == 0
            else torch.tensor([[2, 20, 21, 3], [2, 30, 31, 3]])
        )
        mask = torch.ones_like(ids)
        products = torch.tensor([0, 1]) + 2 * rank
        pair_ids, _ = pair_texts(image, text, ids, mask, products, swap=torch.tensor([True, True]))
        out[rank] = pair_ids.tolist()
    finally:
        dist.destroy_process_group()


def test_itm_mines_hard_negatives_over_the_global_batch() -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_mining_worker, args=(free_port(), out), nprocs=2, start_method="spawn")
        result = dict(out)
    # rank 0, image 0: its hardest negative is product 3's text, held by rank 1;
    # image 1 scores 0 against every other text: the tie goes to the lowest index, product 0's (padded)
    assert result[0] == [[2, 30, 31, 3], [2, 10, 3, 0]]
    # rank 1: image 2 ties at 0 with every other text -> product 0's; image 3 is closest (0.45) to
    # product 1's text; both live on rank 0. Trimmed to the longest chosen text (3 tokens).
    assert result[1] == [[2, 10, 3], [2, 11, 3]]


def test_pac_soft_cross_entropy_matches_hand_computation_and_skips_products_without_attributes() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)]])
    targets = torch.tensor([[0.5, 0.5]])
    # log_softmax = [log(1/4), log(3/4)]
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected)
    # a row of weights summing below 1 is renormalised, not scaled down (the reference's normalize_targets)
    assert soft_cross_entropy(logits, targets / 3).item() == pytest.approx(expected)
    net = pretrain_net()
    pac = L.PacLoss()
    batch = fake_batch()
    full = pac(net, batch, StepContext(torch.Generator()))["loss"]
    subset = {k: (v[:-1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    assert torch.allclose(full, pac(net, subset, StepContext(torch.Generator()))["loss"], atol=1e-6)


def test_cosine_classifier_is_unscaled_by_default() -> None:
    head = pretrain_net().heads["pac"]
    logits = head(torch.randn(5, 32))
    assert logits.abs().max() <= 1.0 + 1e-6


def test_mlm_head_is_tied_and_ignores_unmasked_positions() -> None:
    net = pretrain_net()
    mlm = L.MlmLoss()
    assert net.heads["mlm"].predictions.decoder.weight is net.text_encoder.embeddings.word_embeddings.weight
    batch = fake_batch()
    loss = mlm(net.eval(), batch, StepContext(torch.Generator()))["loss"]
    batch["mlm_labels"][:, 5] = IGNORE_INDEX  # already ignored: nothing changes
    assert torch.allclose(loss, mlm(net, batch, StepContext(torch.Generator()))["loss"])
    batch["mlm_labels"][:] = IGNORE_INDEX
    empty = mlm(net, batch, StepContext(torch.Generator()))["loss"]
    assert empty.item() == 0.0 and empty.requires_grad


def test_mpfc_loss_uses_masked_cells_only() -> None:
    torch.manual_seed(0)
    net = pretrain_net().eval()
    mpfc = L.MpfcLoss()
    batch = fake_batch()
    batch["patch_labels"] = torch.randint(0, 16, (6, 49))
    loss = mpfc(net, batch, StepContext(torch.Generator()))["loss"]
    batch["patch_labels"][:, :10] = (batch["patch_labels"][:, :10] + 1) % 16  # change unmasked cells only
    assert torch.allclose(loss, mpfc(net, batch, StepContext(torch.Generator()))["loss"])
    batch["patch_labels"][:, 12] = (batch["patch_labels"][:, 12] + 1) % 16  # a masked cell
    assert not torch.allclose(loss, mpfc(net, batch, StepContext(torch.Generator()))["loss"])
    del batch["patch_labels"]  # now from the tokenizer, on the same images
    assert torch.isfinite(mpfc(net, batch, StepContext(torch.Generator()))["loss"])


def test_mvc_dropout_counts_follow_the_reference() -> None:
    text, visual = dropout_positions(
        num_text=75, num_visual=49, max_text_length=75, ratio=0.25, generator=torch.Generator().manual_seed(0)
    )
    assert len(text) == 18 and len(visual) == 12 and visual.max() < 49
    text, _ = dropout_positions(
        num_text=20, num_visual=49, max_text_length=75, ratio=0.25, generator=torch.Generator().manual_seed(0)
    )
    assert len(text) < 18 and (text < 20).all()  # positions past this batch's length were padding


def test_mvc_composed_vector_divides_by_kept_count() -> None:
    net = tiny_fashionvil().eval()
    mvc = L.MvcLoss(max_text_length=10)
    out = mvc(net, fake_batch(), StepContext(torch.Generator().manual_seed(1)))
    assert torch.isfinite(out["loss"])


def test_task_sampler_follows_weights_and_is_a_function_of_the_step() -> None:
    sampler = TaskSampler(REFERENCE_TASK_WEIGHTS, seed=3)
    draws = [sampler(step)[0][0] for step in range(6000)]
    for name, weight in REFERENCE_TASK_WEIGHTS.items():
        assert abs(draws.count(name) / 6000 - weight) < 0.02
    assert [TaskSampler(REFERENCE_TASK_WEIGHTS, seed=3)(s) for s in range(50)] == [
        sampler(s) for s in range(50)
    ]
    summed = TaskSampler({"itc": 1.0, "mlm": 0.5, "pac": 0.0}, mode="sum")(0)
    assert summed == [("itc", 1.0), ("mlm", 0.5)]
    with pytest.raises(ValueError, match="every weight is zero"):
        TaskSampler({"itc": 0.0})
    with pytest.raises(ValueError, match="'sample' or 'sum'"):
        TaskSampler({"itc": 1.0}, mode="mean")


def make_module(mode: str = "sum") -> PretrainModule:
    objectives = {
        "itc": L.ItcLoss(),
        "itm": L.ItmLoss(),
        "mlm": L.MlmLoss(),
        "mpfc": L.MpfcLoss(),
        "mvc": L.MvcLoss(max_text_length=10),
        "pac": L.PacLoss(),
    }
    return PretrainModule(
        pretrain_net(),
        objectives,
        REFERENCE_TASK_WEIGHTS,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        mode=mode,
    )


def test_every_objective_trains_in_sum_mode() -> None:
    module = make_module().train()
    for name, objective in module.objectives.items():
        out = objective(module.net, fake_batch(), StepContext(torch.Generator().manual_seed(0)))
        out["loss"].backward()
        assert torch.isfinite(out["loss"]), name
    grads = {
        n: p.grad is not None and p.grad.abs().sum() > 0
        for n, p in module.named_parameters()
        if p.requires_grad
    }
    assert grads["net.heads.itm.seq_relationship.weight"] and grads["net.heads.pac.weight"]
    assert (
        grads["net.image_encoder.trunk.conv1.0.weight"]
        and grads["net.visual_embeddings.position_embeddings.weight"]
    )


def test_parameter_groups_follow_the_reference() -> None:
    module = make_module()
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    by_id = {id(p): g["name"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(module.named_parameters())
    assert by_id[id(params["net.heads.mpfc.classifier.weight"])] == "fast"
    assert by_id[id(params["net.visual_embeddings.projection.weight"])] == "fast"
    assert by_id[id(params["net.text_encoder.encoder.layer.0.attention.self.query.weight"])] == "base"
    assert by_id[id(params["net.text_encoder.encoder.layer.0.output.LayerNorm.weight"])] == "base_no_decay"
    # the tied MLM decoder is BERT's word embedding table: it trains at BERT's learning rate
    assert by_id[id(module.net.heads.mlm.predictions.decoder.weight)] == "base"
    assert groups["fast"]["lr"] == pytest.approx(20 * groups["base"]["lr"])
    frozen = {id(p) for p in module.net.image_tokenizer.parameters()}
    assert not frozen & set(by_id)  # the frozen VQ tokenizer has no optimizer state
