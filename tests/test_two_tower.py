"""Every protocol for a two-tower reading of our models (a tiny open_clip, FashionViL's unimodal path,
UniFashion's queries) on the synthetic data, fine-tuning an open_clip model with ITC + PAC, and the
embedder presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra

pytest.importorskip("open_clip")

from fashion_vl.cli.eval import evaluate
from fashion_vl.cli.train import train
from fashion_vl.lit.two_tower import ComposedBaselineModule, unit
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
QUIET = [
    "data.num_workers=0",
    "data.eval_batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "print_config=false",
    "data_check=false",
]
# a metric each protocol must log (test split)
EXPECTED = {
    "eval_openclip_fashiongen": ["test/sample100/rsum", "test/full/t2i_r@10", "test/marqo/text/mrr",
                                 "test/marqo/category/precision@10", "test/marqo/subcategory/recall@10"],
    "eval_openclip_fashioniq": ["test/sum/mean_r@10", "test/image/dress_r@50", "test/text/mean_r@10"],
    "eval_openclip_polyvore": ["test/r@10", "test/r@30", "test/r@50"],
    "eval_openclip_subcategory": ["test/acc", "test/macro_f1"],
    "eval_openclip_category": ["test/acc", "test/macro_f1"],
    "eval_openclip_fashion200k_t2i": ["test/full/t2i_r@10", "test/marqo/text/recall@10"],
    "eval_openclip_fashion200k_composed": ["test/sum/r@10", "test/image/r@1", "test/text/r@50"],
}  # fmt: skip
FAST = (
    "eval_openclip_fashiongen",
    "eval_openclip_fashioniq",
    "eval_openclip_polyvore",
    "eval_openclip_subcategory",
)


def run_eval(
    tmp_path: Path, synth_dir: Path, experiment: str, embedder: str, *extra: str
) -> dict[str, float]:
    cfg = compose_config(
        "eval", [f"experiment={experiment}", f"embedder={embedder}", *QUIET, *extra], tmp_path, synth_dir
    )
    try:
        return evaluate(cfg)[0]
    finally:
        GlobalHydra.instance().clear()


def check(metrics: dict[str, float], experiment: str) -> None:
    missing = [k for k in EXPECTED[experiment] if k not in metrics]
    assert not missing, f"{experiment} did not log {missing}: {sorted(metrics)}"
    # recalls are percentages; an rsum adds six of them
    bad = {
        k: v
        for k, v in metrics.items()
        if not k.endswith("/queries") and not 0.0 <= v <= (600.0 if k.endswith("rsum") else 100.0)
    }
    assert not bad, bad


@pytest.mark.parametrize(
    "experiment", [pytest.param(e, marks=() if e in FAST else pytest.mark.slow) for e in EXPECTED]
)
def test_open_clip_runs_every_protocol(experiment: str, tmp_path: Path, synth_dir: Path) -> None:
    check(run_eval(tmp_path, synth_dir, experiment, "openclip_tiny"), experiment)


@pytest.mark.parametrize(
    "embedder, experiment, init",
    [
        ("unifashion_demo", "eval_openclip_fashioniq", "model.qformer.init_from=null"),
        pytest.param("fashionvil_demo", "eval_openclip_fashiongen", "model.init_from=null", marks=pytest.mark.slow),
        pytest.param("unifashion_demo", "eval_openclip_polyvore", "model.qformer.init_from=null", marks=pytest.mark.slow),
        pytest.param("unifashion_demo", "eval_openclip_subcategory", "model.qformer.init_from=null", marks=pytest.mark.slow),
        pytest.param("fashionvil_demo", "eval_openclip_fashion200k_composed", "model.init_from=null", marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_fashionvil_and_unifashion_run_the_two_tower_protocols(
    embedder: str, experiment: str, init: str, tmp_path: Path, synth_dir: Path
) -> None:
    """FashionViL's image-only/text-only embeddings and UniFashion's multi-vector queries go through the
    same modules (random init here; make compare loads the demos' checkpoints)."""
    check(run_eval(tmp_path, synth_dir, experiment, embedder, init, "image_size=64"), experiment)


class _FakeNet(torch.nn.Module):
    """Image embedding = the first 4 pixels of channel 0; text embedding = the first 4 token ids."""

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return 3.0 * images[:, 0, 0, :4]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False):
        return input_ids[:, :4].float()


def test_composed_baselines_are_image_text_and_the_sum_of_unit_vectors() -> None:
    module = ComposedBaselineModule(_FakeNet(), queries=("image", "text", "sum"), group_names=None)
    g = torch.Generator().manual_seed(0)
    batch = {
        "query_image": torch.rand(3, 3, 4, 4, generator=g),
        "input_ids": torch.randint(1, 9, (3, 5), generator=g),
        "attention_mask": torch.ones(3, 5, dtype=torch.long),
        "query_positive": torch.arange(3), "query_group": torch.zeros(3, dtype=torch.long),
        "query_exclude": torch.full((3,), -1),
        "gallery_image": torch.rand(4, 3, 4, 4, generator=g), "gallery_key": torch.arange(4),
        "gallery_positive": torch.arange(4), "gallery_group": torch.zeros(4, dtype=torch.long),
    }  # fmt: skip
    module._evaluate(batch, module.test_recall)
    image = F.normalize(batch["query_image"][:, 0, 0, :4], dim=-1)
    text = F.normalize(batch["input_ids"][:, :4].float(), dim=-1)
    stored = {mode: metric.query_emb[0] for mode, metric in module.test_recall.items()}
    assert torch.allclose(stored["image"], image)
    assert torch.allclose(stored["text"], text)
    assert torch.allclose(stored["sum"], F.normalize(image + text, dim=-1))
    # a multi-vector image embedding is read as the normalised mean of its normalised vectors
    multi = torch.randn(2, 5, 4, generator=g)
    assert torch.allclose(unit(multi), F.normalize(F.normalize(multi, dim=-1).mean(1), dim=-1))


def test_finetune_open_clip_with_itc_and_pac(tmp_path: Path, synth_dir: Path) -> None:
    cfg = compose_config(
        "train",
        ["experiment=demo_finetune_openclip", *QUIET, "data.batch_size=8", "trainer.max_steps=2",
         "trainer.val_check_interval=2", "callbacks.checkpoint_last.every_n_train_steps=2", "logger=csv",
         "trainer.log_every_n_steps=1", "~callbacks.rich_progress_bar", "~callbacks.model_summary"],
        tmp_path / "train", synth_dir,
    )  # fmt: skip
    metrics, objects = train(cfg)
    GlobalHydra.instance().clear()
    lit = objects["lit"]
    assert set(lit.objectives) == {"itc", "pac"} and objects["trainer"].global_step == 2
    assert 0.0 <= metrics["val/full/rsum"] <= 600.0
    logged = (tmp_path / "train" / "csv").rglob("metrics.csv")
    header = next(logged).read_text().splitlines()[0]
    assert {"train/itc_loss", "train/pac_loss", "train/logit_scale", "train/loss"} <= set(header.split(","))
    # the run's checkpoint is what the fine-tuned embedder preset loads
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    eval_cfg = compose_config(
        "eval", ["experiment=eval_openclip_fashiongen", "embedder=openclip_tiny_finetuned",
                 f"model.init_from={ckpt}"], tmp_path / "eval", synth_dir,
    )  # fmt: skip
    from hydra.utils import instantiate

    loaded = instantiate(eval_cfg.model)
    GlobalHydra.instance().clear()
    trained = lit.net.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def test_every_embedder_preset_and_protocol_compose(tmp_path: Path) -> None:
    presets = sorted(p.stem for p in (CONF / "embedder").glob("*.yaml") if not p.stem.startswith("_"))
    assert {"openclip_marqo_fashionsiglip", "openclip_tiny", "fashionvil_demo", "unifashion_demo"} <= set(
        presets
    )
    # (every protocol composes with the tiny model in test_open_clip_runs_every_protocol and test_configs)
    for preset, experiment in [(p, "eval_openclip_fashiongen") for p in presets]:
        cfg = compose_config("eval", [f"experiment={experiment}", f"embedder={preset}"], tmp_path)
        GlobalHydra.instance().clear()
        is_clip = preset.startswith(("openclip", "transformers"))
        assert cfg.model._target_.startswith("fashion_vl.models.openclip.") == is_clip, (preset, experiment)
        if preset.startswith("openclip"):
            assert cfg.data.tokenizer._target_.endswith("open_clip_tokenizer")
            assert cfg.data.eval_transform._target_.endswith("open_clip_transform")
    # without embedder=..., the protocols evaluate Marqo-FashionSigLIP from the hub
    cfg = compose_config("eval", ["experiment=eval_openclip_fashiongen"], tmp_path)
    GlobalHydra.instance().clear()
    assert cfg.model.name == "hf-hub:Marqo/marqo-fashionSigLIP"
