"""--pretrain zae: layer-wise autoencoder pre-training of fclin, and lt rewinding to it."""

import pickle

import pytest
import torch
from torch import nn

from lth import lottery, resume
from lth.initialization import initialize
from lth.pretrain import hidden_stages, pretrain_zae, train_autoencoder
from lth.results import RunDir
from tests.datafiles import write_cifar_files
from tests.test_fclin import normalised_cifar_like, small_fclin
from tests.test_main import TINY, only_run, run_main


def test_each_hidden_layer_learns_to_reconstruct_its_input():
    _, images = normalised_cifar_like(200)
    torch.manual_seed(0)
    model = small_fclin(depth=2, components=150)
    model.fit_to_data(images)
    # At this small width the paper's 0.01-scaled init leaves most codes under TRec's threshold
    # of 1 (no gradient); Xavier weights give every layer live codes to learn from.
    initialize(model, "xavier")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = pretrain_zae(model, images, epochs=5, batch_size=20)
    assert len(history) == len(hidden_stages(model)) == 3
    for costs in history:
        assert costs[-1] < costs[0], costs
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"body.0.weight", "body.3.weight", "body.5.weight"}  # not output, not buffers
    kinds = [any(isinstance(m, nn.ReLU) for m in after) for _, after in hidden_stages(model)]
    assert kinds == [True, False, True]  # zero-bias (TRec) layers are the ReLU ones


@pytest.mark.parametrize(("weight", "learns"), [(0.9, False), (1.1, True)])
def test_a_zero_bias_code_passes_only_above_1(weight, learns):
    """TRec(z) = z * (z > 1): on inputs of 1, a weight of 0.9 makes every code 0.9, cut to 0, so
    nothing reaches the weight (only the visible bias learns); 1.1 passes its codes and the weight
    learns."""
    parameter = nn.Parameter(torch.full((1, 1), weight))
    train_autoencoder(parameter, torch.ones(8, 1), True, epochs=2, batch_size=4)
    assert (parameter.item() != pytest.approx(weight, abs=1e-6)) == learns


def test_lt_rewinds_to_the_pretrained_weights(tmp_path):
    source = write_cifar_files(tmp_path / "source", "cifar10", n_train=100, n_test=40)
    base = [*TINY, "--end_iter=1", "--dataset=cifar10", "--arch_type=fclin", "--fclin_depth=1"]
    base += ["--init=kaiming"]  # 100 images give < 100 whitened dims: too few for the data init
    base += [f"--data_source={source}", f"--data_dir={tmp_path / 'data'}"]
    initial = {}
    for name, extra in (("plain", []), ("zae", ["--pretrain=zae", "--pretrain_epochs=2"])):
        folder = tmp_path / name
        folder.mkdir()
        assert run_main(folder, *base, "--prune_iterations=1", *extra) == 0
        run = only_run(folder)
        saves = run / "saves" / "fclin" / "cifar10"
        initial[name] = torch.load(
            saves / "initial_state_dict_lt.pth.tar", weights_only=False
        ).state_dict()
    plain, pretrained = initial["plain"], initial["zae"]
    assert not torch.equal(plain["body.0.weight"], pretrained["body.0.weight"])
    assert torch.equal(plain["classifier.weight"], pretrained["classifier.weight"])
    assert torch.equal(plain["whitening"], pretrained["whitening"])
    checkpoint = torch.load(run / "checkpoints" / "latest.pth", weights_only=False)
    assert "initial_state" not in checkpoint["progress"]  # a resume reads the file instead
    files = RunDir(run, "fclin", "cifar10", "lt")
    model = torch.load(saves / "initial_state_dict_lt.pth.tar", weights_only=False)
    whole = resume.whole_checkpoint(checkpoint, files, False, lottery.saved_model_classes(model))
    for key, value in whole["progress"]["initial_state"].items():
        assert torch.equal(value, pretrained[key]), key  # what level 1 rewinds to
    with open(run / "dumps" / "lt" / "fclin" / "cifar10" / "lt_mask_100.0.pkl", "rb") as file:
        assert len(pickle.load(file)) == 2
