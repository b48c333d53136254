"""The image experiment: the paper's network, the fixed-depth baseline, training, resume, CLI errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from infdepth.cli import main as cli_main
from infdepth.data.history import mnist_history as reference_history
from infdepth.data.images import ImageData, load_images
from infdepth.depth.layer import InfiniteDepth, depth_layers
from infdepth.experiments._common import RunContext
from infdepth.experiments.depth.images import Config as ImagesConfig
from infdepth.experiments.depth.images import build_model, epoch_batches, make_optimizer, run_images
from infdepth.models.going_deeper import LAYERS, GoingDeeperCNN, ResidualStack
from infdepth.train import model_penalty


def ctx(out, **kw) -> RunContext:
    return RunContext(out=out, progress=False, **kw)

SMALL = ImagesConfig(dataset="digits", epochs=2, batch_size=64, channels=6, dense_units=24)


@pytest.fixture(scope="module")
def digits_small() -> ImageData:
    d = load_images("digits")
    return ImageData("digits", d.x_train[:320], d.y_train[:320], d.x_test[:160], d.y_test[:160], 10, "test")


def test_paper_network_mnist_shapes_and_trainable_params():
    model = build_model(ImagesConfig(), (1, 28, 28), 10)
    assert [name for name, _ in depth_layers(model)] == list(LAYERS)
    assert model.dcnn0.blocks[0][0].out_channels == 30 and model.dcnn1.blocks[0][0].out_channels == 60
    assert model.fc.in_features == 60 * 7 * 7 and model.fc.out_features == 256
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # every trainable weight sits inside a g-infinity layer
    inside = {id(p) for _, layer in depth_layers(model) for p in layer.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(id(p) in inside for p in trainable)
    block = model.dfc0.blocks[0]
    assert isinstance(block[1], torch.nn.Dropout) and block[1].p == 0.25
    assert isinstance(block[2], torch.nn.BatchNorm1d) and block[2].momentum == 0.01
    assert model.dcnn0.w_l2 == 5e-5 and model.dfc0.w_l2 == 1e-3 and model.dfc0.block_l2 == 1e-8


def test_text_dropout_and_adadelta_defaults():
    cfg = replace(ImagesConfig(), dropout=0.1)
    model = build_model(cfg, (1, 8, 8), 10)
    assert model.dcnn1.blocks[0][1].p == 0.1
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adadelta)
    assert opt.defaults["lr"] == 1.0 and opt.defaults["rho"] == 0.95 and opt.defaults["eps"] == 1e-7
    assert isinstance(make_optimizer(replace(cfg, optimizer="adam", lr=1e-3), model), torch.optim.Adam)


def test_fixed_depth_network_is_a_plain_residual_stack():
    model = build_model(replace(SMALL, fixed_depth=3), (1, 8, 8), 10)
    assert depth_layers(model) == []
    for name in LAYERS:
        stack = getattr(model, name)
        assert isinstance(stack, ResidualStack) and len(stack.blocks) == 3
    stack = model.dfc0
    stack.eval()
    x = torch.randn(5, 24)
    expected = x
    for block in stack.blocks:
        expected = torch.relu(expected + block(expected))
    torch.testing.assert_close(stack(x), expected)
    penalty = model_penalty(model)
    assert penalty is not None and float(penalty.detach()) == pytest.approx(1e-8 * (3 * (6 + 12 + 24)))


def test_batches_cover_each_epoch_once_and_are_pure():
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10)
    batch = epoch_batches(x, y, 4, seed=3)
    epoch0 = torch.cat([batch(s)[1] for s in range(3)])
    assert sorted(epoch0.tolist()) == list(range(10)) and len(batch(2)[1]) == 2
    later = batch(5)[1]
    fresh = epoch_batches(x, y, 4, seed=3)
    assert torch.equal(fresh(5)[1], later) and torch.equal(fresh(1)[1], batch(1)[1])
    assert not torch.equal(torch.cat([batch(s)[1] for s in range(3, 6)]), epoch0)


def test_short_digits_run_learns(tmp_path, digits_small):
    # Adam with a large step: Adadelta starts slowly and BatchNorm's Keras momentum (0.01)
    # needs a few dozen steps before test-mode statistics are meaningful
    cfg = replace(SMALL, epochs=4, batch_size=32, optimizer="adam", lr=1e-2)
    untrained = build_model(cfg, (1, 8, 8), 10).eval()
    with torch.no_grad():
        chance = float((untrained(digits_small.x_test).argmax(1) == digits_small.y_test).float().mean())
    res = run_images(cfg, ctx(tmp_path), data=digits_small)
    summary = json.loads((tmp_path / "summary.json").read_text())
    hist = summary["history"]
    assert hist["epoch"] == [1, 2, 3, 4]
    assert res.final_test_acc > chance + 0.25
    assert hist["test_loss"][-1] < hist["test_loss"][0] - 0.2
    assert hist["train_acc"][-1] > hist["train_acc"][0] + 0.2
    assert set(hist["w"]) == set(LAYERS) and all(len(v) == 4 for v in hist["w"].values())
    # the depth is learned: every layer's w left its initial value, and the reported w is the parameter
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    for name in LAYERS:
        assert abs(res.final_w[name] - cfg.w0) > 0.02, (name, res.final_w)
        assert res.final_w[name] == float(saved[f"{name}.w"])
    assert summary["reference_mnist"]["paper_peak_test_acc"] == 0.9955
    assert res.final_test_acc_precise_bn is not None and 0 < res.final_test_acc_precise_bn <= 1
    for fig in ("images_acc.png", "images_loss.png", "images_w.png"):
        assert (tmp_path / fig).stat().st_size > 1000


def test_resume_continues_exactly(tmp_path, digits_small):
    cfg = replace(SMALL, epochs=3, fixed_depth=None)
    straight = run_images(cfg, ctx(tmp_path / "a"), data=digits_small)
    run_images(replace(cfg, epochs=2), ctx(tmp_path / "b"), data=digits_small)
    resumed = run_images(cfg, ctx(tmp_path / "b", resume=True), data=digits_small)
    assert resumed.final_w == straight.final_w
    assert resumed.final_test_acc == straight.final_test_acc
    a = json.loads((tmp_path / "a" / "summary.json").read_text())["history"]
    b = json.loads((tmp_path / "b" / "summary.json").read_text())["history"]
    assert a["test_loss"] == b["test_loss"] and a["w"] == b["w"]


def test_resume_refuses_changed_settings(tmp_path, digits_small):
    from infdepth.errors import InputError

    run_images(replace(SMALL, epochs=1), ctx(tmp_path), data=digits_small)
    with pytest.raises(InputError, match="dropout"):
        run_images(replace(SMALL, dropout=0.1), ctx(tmp_path, resume=True), data=digits_small)


def test_fresh_run_refuses_a_used_folder_and_overwrite_replaces_it(tmp_path, digits_small, capsys,
                                                                  monkeypatch):
    import infdepth.experiments.depth.images as images

    monkeypatch.setattr(images, "load_images", lambda name, data_dir=None: digits_small)
    argv = ["images", "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    assert cli_main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert cli_main([*argv, "--dropout", "0.1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert cli_main([*argv, "--resume", "--dropout", "0.1"]) == 2
    assert "--dropout=0.1" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite", "--dropout", "0.1"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["dropout"] == 0.1
    assert cli_main([*argv, "--resume", "--epochs", "2", "--dropout", "0.1"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["epochs"] == 2 and config["resumes"] == [{"epochs": [1, 2]}]


def test_reference_history_is_packaged():
    ref = reference_history()
    assert len(ref["epoch"]) == 5000
    assert ref["w_dcnn1"][-1] == pytest.approx(1.928, abs=1e-3)
    assert max(ref["val_acc"]) == pytest.approx(0.9955, abs=1e-4)


def test_cli_fixed_depth_comparison(tmp_path, monkeypatch, capsys, digits_small):
    import infdepth.experiments.depth.images as images

    monkeypatch.setattr(images, "load_images", lambda name, data_dir=None: digits_small)
    code = cli_main(["images", "--epochs", "1", "--compare-depths", "1,2", "--out", str(tmp_path),
                     "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "fixed1" in out and "fixed2" in out and "learned" in out
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["label"] for r in comparison["fixed"]] == ["fixed1", "fixed2"]
    assert (tmp_path / "images_fixed_depth.png").is_file()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--dataset", "cifar"], "'digits', 'mnist', 'fashion-mnist', 'idx'"),
        (["--dataset", "mnist", "--data-dir", "{tmp}/absent"], "{tmp}/absent does not exist"),
        (["--dataset", "idx", "--data-dir", "{tmp}"], "t10k-images-idx3-ubyte"),
        (["--dataset", "idx", "--data-dir", "{tmp}/corrupt"], "train-images-idx3-ubyte.gz is a corrupt"),
        (["--epochs", "0"], "--epochs=0"),
        (["--optimizer", "sgd"], "'adadelta', 'adam'"),
        (["--dropout", "1.5"], "--dropout=1.5"),
        (["--compare-depths=-1,2"], "--compare-depths=-1 is not accepted; expected an integer in [0, 1000]"),
        (["--compare-depths", "2,2"], "repeats an entry"),
        (["--fixed-depth", "2", "--compare-depths", "1"], "exclude each other"),
        (["--lr", "0"], "--lr=0.0 is not accepted"),
        (["--device", "foo"], "--device='foo'"),
        (["--channels", "10000000"], "--channels/--dense-units asks for a tensor"),
        (["--batch-size", "100000000000"], "--batch-size=100000000000 is not accepted"),
        (["--resume"], "no checkpoint at"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, capsys, argv, needle):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt / f"{name}.gz").write_bytes(b"\x1f\x8b not really gzip")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = cli_main(["images", *argv, "--out", str(tmp_path / "run"), "--no-progress"])
    except SystemExit as exc:  # argparse's own errors (a malformed list) exit 2 from parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert needle.replace("{tmp}", str(tmp_path)) in err
    assert "Traceback" not in err
    assert sum(": error:" in line for line in err.splitlines()) == 1
    if "usage:" not in err:  # argparse's parse errors come after its usage; ours are one line
        assert len(err.strip().splitlines()) == 1


def test_fashion_mnist_missing_says_how_to_install(tmp_path, capsys, monkeypatch):
    import infdepth.data.images as data_images

    monkeypatch.setattr(data_images, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    code = cli_main(["images", "--dataset", "fashion-mnist", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err


def test_model_is_plain_module():
    assert issubclass(GoingDeeperCNN, torch.nn.Module)
    assert isinstance(build_model(SMALL, (1, 8, 8), 10).dcnn0, InfiniteDepth)


def test_mixed_precision_forward_gives_float_logits():
    model = build_model(replace(SMALL, amp=True), (1, 8, 8), 10)
    out = model(torch.rand(4, 1, 8, 8))
    assert out.dtype == torch.float32 and out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.dcnn0.w.grad is not None


def test_precise_bn_recomputes_statistics_on_a_copy():
    from infdepth.experiments.depth.images import precise_bn

    model = build_model(SMALL, (1, 8, 8), 10)
    before = model.dfc0.blocks[0][2].running_mean.clone()
    x = torch.rand(50, 1, 8, 8)
    net = precise_bn(model, x, batch_size=50)
    assert torch.equal(model.dfc0.blocks[0][2].running_mean, before)
    assert not net.training and not torch.equal(net.dfc0.blocks[0][2].running_mean, before)
    # with the statistics of x, eval mode on x matches batch statistics without dropout
    ref = copy_with_batch_stats(model)
    torch.testing.assert_close(net(x), ref(x), rtol=0.05, atol=0.05)


def copy_with_batch_stats(model):
    import copy

    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    return net
