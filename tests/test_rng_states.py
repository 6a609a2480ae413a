"""A run's random states move between machines: a checkpoint saved on a machine with 4 GPUs
resumes on one with 1 GPU or none (CUDA mocked: no GPU needed)."""

import random

import numpy as np
import pytest
import torch

from lth import record, resume
from lth.results import RunDir

SAVED_ON = 4  # GPUs of the machine that saved the checkpoint


def cuda_state(device: int) -> torch.Tensor:
    return torch.full((16,), device, dtype=torch.uint8)


def machine(monkeypatch, gpus: int) -> list[tuple[int, torch.Tensor]]:
    """This process as a machine with `gpus` CUDA devices; the states set on them, in order.

    Setting the state of a device that is not there fails, as it does in torch; without CUDA,
    any call of a CUDA random-state function fails.
    """
    calls: list[tuple[int, torch.Tensor]] = []

    def set_rng_state(state: torch.Tensor, device: int | str = "cuda") -> None:
        index = 0 if device == "cuda" else int(device)
        if index >= gpus:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        calls.append((index, state.clone()))

    def set_rng_state_all(states: list[torch.Tensor]) -> None:  # as torch: one device each
        for index, state in enumerate(states):
            set_rng_state(state, index)

    def get_rng_state_all() -> list[torch.Tensor]:
        if gpus == 0:
            raise RuntimeError("no CUDA here")
        return [cuda_state(device) for device in range(gpus)]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", get_rng_state_all)
    return calls


@pytest.fixture
def saved_on_four_gpus(tmp_path, monkeypatch) -> dict:
    """The rng states of a checkpoint saved on a 4-GPU machine, read back from its file, and
    the draws that followed the save."""
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with monkeypatch.context() as patch:
        machine(patch, SAVED_ON)
        states = record.rng_states()
    after = (random.random(), np.random.rand(), torch.rand(1).item())
    files = RunDir(tmp_path, "fc1", "mnist", "lt")
    files.save_checkpoint({"level": 0, "model_state": {}, "progress": {}, "rng": states})
    rng = resume.load_verified(files.checkpoint_path(), "checkpoint")["rng"]
    assert len(rng["cuda"]) == SAVED_ON
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    return {"rng": rng, "after": after}


def draws() -> tuple[float, float, float]:
    return (random.random(), np.random.rand(), torch.rand(1).item())


def test_on_a_machine_with_fewer_gpus_the_devices_there_are_restored(
    saved_on_four_gpus, monkeypatch, capsys
):
    calls = machine(monkeypatch, 1)
    record.restore_rng_states(saved_on_four_gpus["rng"])
    assert [index for index, _ in calls] == [0]
    assert torch.equal(calls[0][1], cuda_state(0))
    assert draws() == saved_on_four_gpus["after"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("notice: ")
    assert "4 CUDA device(s) and this machine has 1" in out[0]


def test_on_a_machine_with_as_many_gpus_every_device_is_restored(
    saved_on_four_gpus, monkeypatch, capsys
):
    calls = machine(monkeypatch, SAVED_ON)
    record.restore_rng_states(saved_on_four_gpus["rng"])
    assert [index for index, _ in calls] == [0, 1, 2, 3]
    assert all(torch.equal(s, cuda_state(i)) for i, s in calls)
    assert capsys.readouterr().out == ""


def test_on_a_cpu_only_machine_no_cuda_state_is_set(saved_on_four_gpus, monkeypatch, capsys):
    calls = machine(monkeypatch, 0)
    record.restore_rng_states(saved_on_four_gpus["rng"])
    assert calls == []
    assert draws() == saved_on_four_gpus["after"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "this machine has 0: they are left out" in out[0]
