"""The ``fidelity`` preset (``conf/fidelity/``) and the switches no golden fixture covers: what composes
under ``fidelity=reference``, per-GPU ITM mining, per-rank metric averaging and dropped FashionIQ queries
under re-ranking. The fixtures in ``test_fidelity.py`` check every other switch against the authors'
code."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from tests.conftest import compose_config

# (experiment, {dotted key: (ours, reference)}): a FashionViL and a UniFashion run of each kind
PRESET = {
    "demo_pretrain": {
        "lit.objectives.itm.gather_negatives": (True, False),
        "lit.objectives.itm.positives": ("product", "diagonal"),
        "lit.recall.ranking": ("pessimistic", "mmf"),
        "lit.recall.sample100_fill": ("random", "topk"),
        "lit.recall.per_rank": (False, True),
    },
    "demo_finetune_outfit": {"lit.recall.ranking": ("pessimistic", "mmf")},
    "demo_finetune_composed_fashioniq": {"lit.recall.ranking": ("pessimistic", "mmf")},
    "demo_unifashion_phase1": {
        "model.qformer.clamp_temperature": (True, False),
        "lit.objectives.itm.negative_rows": ("own", "swapped"),
        "lit.objectives.caption.prefix": ("queries", "fused"),
        "lit.objectives.caption.append_eos": (True, False),
        "lit.objectives.itc.loss.gather": (True, False),
    },
    "demo_unifashion_phase1_diffusion": {
        "lit.objectives.diffusion.vae_input": ("unit_range", "as_normalised"),
        "lit.objectives.diffusion.condition": ("queries", "fused"),
        "lit.objectives.diffusion.condition_drop": (0.1, 0.0),
        "model.diffusion.pad_prompts": ("max_length", "longest"),
    },
    "demo_unifashion_phase2": {
        "model.qformer.clamp_temperature": (True, False),
        "lit.objectives.ttc.source": ("cls", "queries"),
        "lit.task_weights.ttc": (2.0, 1.0),
        "lit.objectives.itm.mining": ("caption", "composed"),
        "lit.objectives.itm.query_set": ("queries", "prompts"),
        "lit.objectives.itm.negatives": ("uniform", "argmax"),
        "lit.gallery_queries": ("prompts", "queries"),
        "lit.drop_last_queries": (0, 4),
        "lit.rerank_top_k": (20, 40),
    },
}


def targets_accept_their_keys(node: DictConfig) -> None:
    """Every ``_target_`` under ``node`` takes the keys set next to it (no key the preset adds is
    unknown to the constructor it reaches)."""
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        target = get_method(node._target_)
        keys = {k: None for k in node if not str(k).startswith("_")}
        params = inspect.signature(target).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = set(keys) - set(params)
            assert not unknown, f"{node._target_} takes no {sorted(unknown)}"
    for key in node:
        targets_accept_their_keys(node._get_node(key))


@pytest.mark.parametrize(
    ("root", "experiment"),
    [("train", e) for e in sorted(PRESET)] + [("eval", "demo_pretrain"), ("eval", "demo_unifashion_phase2")],
)
def test_fidelity_preset_sets_each_switch_where_it_lives(experiment: str, root: str, tmp_path: Path) -> None:
    ours = compose_config(root, [f"experiment={experiment}"], tmp_path)
    reference = compose_config(root, [f"experiment={experiment}", "fidelity=reference"], tmp_path)
    for key, (want_ours, want_reference) in PRESET[experiment].items():
        assert OmegaConf.select(ours, key) == want_ours, key
        assert OmegaConf.select(reference, key) == want_reference, key
    for cfg in (ours, reference):
        targets_accept_their_keys(cfg.lit)
    # nothing a run's modules do not take: the UniFashion keys stay out of FashionViL runs and back
    if experiment.startswith("demo_unifashion"):
        assert OmegaConf.select(reference, "lit.recall") is None
    else:
        assert OmegaConf.select(reference, "model.qformer") is None
        assert OmegaConf.select(reference, "lit.objectives.ttc") is None


def test_command_line_beats_the_preset(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        ["experiment=demo_unifashion_phase2", "fidelity=reference", "lit.drop_last_queries=0"],
        tmp_path,
    )
    assert cfg.lit.drop_last_queries == 0 and cfg.lit.gallery_queries == "queries"


def fake_second_rank(monkeypatch: pytest.MonkeyPatch, module, other: dict[str, torch.Tensor]) -> None:
    """``gather_*`` in ``module`` return this rank's rows followed by ``other``'s (rank 0 of 2)."""

    def gather(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        for value in other.values():
            if value.dtype == x.dtype and value.shape[1:] == x.shape[1:]:
                return torch.cat([x, value])
        raise AssertionError(f"no fake rows for {tuple(x.shape)}")

    monkeypatch.setattr(module, "gather_no_grad", gather)
    monkeypatch.setattr(module, "gather_padded", gather)


def test_fashionvil_itm_mines_among_every_rank_or_this_rank_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import fashion_vl.losses.itm as itm

    image = torch.eye(3, 4)
    text = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    ids = torch.arange(3)[:, None].repeat(1, 5)
    mask = torch.ones(3, 5, dtype=torch.long)
    # the other rank's texts: near-copies of this rank's images (the hardest negatives), other products
    fake_second_rank(
        monkeypatch, itm, {"emb": 0.99 * image[[1, 2, 0]], "ids": 10 + ids, "products": torch.arange(3) + 10}
    )
    swap = torch.ones(3, dtype=torch.bool)
    everyone, _ = itm.pair_texts(image, text, ids, mask, torch.arange(3), swap, gather=True)
    own_rank, _ = itm.pair_texts(image, text, ids, mask, torch.arange(3), swap, gather=False)
    assert (everyone[:, 0] >= 10).all()  # picked on the other rank
    assert (own_rank[:, 0] < 10).all() and (own_rank[:, 0] != torch.arange(3)).all()


def test_per_rank_metrics_average_each_rank_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import fashion_vl.metrics.composed as composed
    from fashion_vl.metrics.composed import ComposedGalleryRecall

    metric = ComposedGalleryRecall((1,), per_rank=True)
    assert metric.sync_on_compute is False  # each rank ranks against its own rows, as MMF's loop
    metric.update_queries(torch.eye(2), torch.arange(2), torch.zeros(2, dtype=torch.long))
    metric.update_gallery(torch.eye(2), torch.arange(2), torch.arange(2), torch.zeros(2, dtype=torch.long))
    monkeypatch.setattr(composed, "world_size", lambda: 2)
    other_rank = torch.tensor([0.0, 0.0], dtype=torch.float64)  # r@1 and avg of a rank that missed all
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(other_rank))
    assert metric.compute() == {"r@1": 50.0, "avg": 50.0}
    assert ComposedGalleryRecall((1,)).sync_on_compute is True


def test_dropped_queries_keep_their_index_for_reranking() -> None:
    from fashion_vl.metrics.composed import ComposedGalleryRecall

    metric = ComposedGalleryRecall((1,), group_names={0: "a", 1: "b"}, drop_last_batch=2)
    groups = torch.tensor([0, 1, 0, 1, 0])  # group 0 has 3 queries: its last (index 4) is dropped
    emb = torch.eye(5)
    metric.update_queries(emb, torch.arange(5), groups)
    metric.update_gallery(emb, torch.arange(5), torch.arange(5), groups)
    seen: list[torch.Tensor] = []

    def rescore(query_index: torch.Tensor, gallery_index: torch.Tensor) -> torch.Tensor:
        seen.append(query_index)
        return torch.zeros(gallery_index.shape)

    out = metric.compute_reranked(rescore, top_k=1)
    assert torch.cat(seen).tolist() == [0, 1, 2, 3] and out["dropped_queries"] == 1.0
    assert metric.compute()["dropped_queries"] == 1.0
