"""What the fault tests share: the uninterrupted reference run and state comparisons."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from fashion_vl.cli.train import train
from tests.conftest import compose_config
from tests.faults.runner import KILL_RUN


def final_state(objects: dict) -> dict[str, torch.Tensor]:
    """Weights, buffers and AdamW state (moments and step counts) at the end of a run."""
    state = {f"module.{k}": v.detach().clone() for k, v in objects["lit"].state_dict().items()}
    for i, s in objects["trainer"].optimizers[0].state_dict()["state"].items():
        for k, v in s.items():
            state[f"adam.{i}.{k}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)
    return state


def assert_same_state(reference: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    assert reference.keys() == state.keys()
    for key, value in reference.items():
        assert torch.equal(value, state[key]), f"{key} differs after resume"


@pytest.fixture(scope="session")
def reference_12(tmp_path_factory, synth_dir) -> tuple[dict[str, torch.Tensor], dict]:
    """The uninterrupted 12-step run (:data:`~tests.faults.runner.KILL_RUN`): its final state and its
    metrics.json."""
    out = tmp_path_factory.mktemp("reference")
    _, objects = train(compose_config("train", KILL_RUN, out, synth_dir))
    GlobalHydra.instance().clear()
    return final_state(objects), json.loads((out / "metrics.json").read_text())
