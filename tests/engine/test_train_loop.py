"""The training loop with a tiny fake model: resume, gradient accumulation, NaN stop, files."""

import json
import os
import shutil

import pytest
import torch

from pointsup import checkpoint as ckpt
from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.transforms import build_train_transforms
from pointsup.train import main

from .fakes import TinyDetector, make_tiny_coco, tiny_config


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return make_tiny_coco(str(root), num_images=6, size=64), str(root / "images")


def train_set(tiny_coco, cfg, random_flip=False):
    json_path, images = tiny_coco
    cfg.data.random_flip = random_flip
    return CocoInstanceDataset(json_path, images, transforms=build_train_transforms(cfg.data), use_masks=False)


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["iter"]: r for r in map(json.loads, f) if "total_loss" in r}


def new_model(dropout=0.0, **kw):
    torch.manual_seed(123)  # the same initial weights in every run
    return TinyDetector(dropout=dropout, **kw)


def test_resume_continues_exactly(tiny_coco, tmp_path):
    """Kill after the checkpoint at iteration 2 (simulated): the resumed run's next losses and
    final weights equal those of an uninterrupted run. Random flips and dropout make the test
    depend on the restored RNG state and data position."""
    cfg = tiny_config(str(tmp_path / "full"), max_iter=5)
    cfg.checkpoint_period = 2
    model_full = new_model(dropout=0.3)
    main(cfg, model=model_full, train_set=train_set(tiny_coco, cfg, random_flip=True))
    full = losses(cfg.output_dir)
    assert sorted(full) == [1, 2, 3, 4, 5]
    assert os.path.exists(os.path.join(cfg.output_dir, "model_0000004.pth"))

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(os.path.join(cfg.output_dir, "model_0000002.pth"), resumed_dir)
    lines = open(os.path.join(cfg.output_dir, "metrics.jsonl")).readlines()
    (resumed_dir / "metrics.jsonl").write_text("".join(lines[:3]))  # the log had gone one line further
    (resumed_dir / "last_checkpoint").write_text("model_0000002.pth")
    cfg.output_dir = str(resumed_dir)
    model_resumed = new_model(dropout=0.3)
    torch.manual_seed(999)  # the resumed process starts from a different global RNG state
    main(cfg, resume=True, model=model_resumed, train_set=train_set(tiny_coco, cfg, random_flip=True))
    resumed = losses(cfg.output_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5]  # lines after the checkpoint were dropped, then redone
    for it in (3, 4, 5):
        assert resumed[it]["total_loss"] == pytest.approx(full[it]["total_loss"], rel=1e-6, abs=1e-7), it
        assert resumed[it]["lr"] == full[it]["lr"]
    for (name, a), b in zip(model_full.state_dict().items(), model_resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_final_checkpoint_is_model_only_unless_asked(tiny_coco, tmp_path):
    """model_final.pth: no optimizer / scaler / RNG state by default (smaller), and continuing
    past max_iter from it warns that the momentum starts afresh; with checkpoint_final_optimizer
    the continuation equals an unbroken longer run."""
    long_cfg = tiny_config(str(tmp_path / "long"), max_iter=5)
    model_long = new_model(dropout=0.3)
    main(long_cfg, model=model_long, train_set=train_set(tiny_coco, long_cfg, random_flip=True))

    cfg = tiny_config(str(tmp_path / "short"), max_iter=3)
    cfg.checkpoint_period = 2
    main(cfg, model=new_model(dropout=0.3), train_set=train_set(tiny_coco, cfg, random_flip=True))
    final = ckpt.load_checkpoint(os.path.join(cfg.output_dir, "model_final.pth"))
    periodic = ckpt.load_checkpoint(os.path.join(cfg.output_dir, "model_0000002.pth"))
    assert {"model", "iteration", "config"} <= set(final) and not {"optimizer", "scaler", "rng"} & set(final)
    assert {"optimizer", "scaler", "rng"} <= set(periodic) and final["iteration"] == 3
    cfg.solver.max_iter = 5
    with pytest.warns(UserWarning, match=r"model_final.pth holds no optimizer state.*fresh SGD momentum"):
        main(cfg, resume=True, model=new_model(dropout=0.3), train_set=train_set(tiny_coco, cfg, random_flip=True))

    cfg = tiny_config(str(tmp_path / "kept"), max_iter=3)
    cfg.checkpoint_final_optimizer = True
    main(cfg, model=new_model(dropout=0.3), train_set=train_set(tiny_coco, cfg, random_flip=True))
    assert {"optimizer", "scaler", "rng"} <= set(ckpt.load_checkpoint(os.path.join(cfg.output_dir, "model_final.pth")))
    cfg.solver.max_iter = 5
    model_continued = new_model(dropout=0.3)
    main(cfg, resume=True, model=model_continued, train_set=train_set(tiny_coco, cfg, random_flip=True))
    for it in (4, 5):
        assert losses(cfg.output_dir)[it]["total_loss"] == pytest.approx(losses(long_cfg.output_dir)[it]["total_loss"],
                                                                         rel=1e-6, abs=1e-7), it
    for (name, a), b in zip(model_long.state_dict().items(), model_continued.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_accumulation_equals_big_batch(tiny_coco, tmp_path):
    results = {}
    for accumulate in (1, 2):
        cfg = tiny_config(str(tmp_path / f"acc{accumulate}"), max_iter=2, ims_per_batch=2, accumulate_steps=accumulate)
        model = new_model()
        main(cfg, model=model, train_set=train_set(tiny_coco, cfg))
        results[accumulate] = (model.state_dict(), losses(cfg.output_dir))
    for name, a in results[1][0].items():
        torch.testing.assert_close(results[2][0][name], a, rtol=1e-5, atol=1e-6, msg=name)
    for it in (1, 2):
        assert results[2][1][it]["total_loss"] == pytest.approx(results[1][1][it]["total_loss"], rel=1e-5)
    # and something was learned at all: the weights moved
    assert not torch.equal(results[1][0]["box.weight"], new_model().state_dict()["box.weight"])


def test_batch_not_divisible_is_an_error(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path), ims_per_batch=3, accumulate_steps=2)
    with pytest.raises(ValueError, match="not divisible"):
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))


def test_nan_loss_stops_with_iteration_and_terms(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path))
    with pytest.raises(FloatingPointError, match=r"iteration 2.*loss_box=nan"):
        main(cfg, model=new_model(nan_at_call=2), train_set=train_set(tiny_coco, cfg))


def test_files_written_and_checkpoint_contents(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "out"), max_iter=3)
    cfg.checkpoint_period = 2
    dataset = train_set(tiny_coco, cfg)
    metrics = main(cfg, model=new_model(), train_set=dataset, val_set=None)
    out = cfg.output_dir
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "loss_curve.png", "model_0000002.pth", "model_final.pth"):
        assert os.path.exists(os.path.join(out, name)), name
    assert ckpt.find_last_checkpoint(out) == os.path.join(out, "model_final.pth")
    state = ckpt.load_checkpoint(os.path.join(out, "model_0000002.pth"))
    assert state["iteration"] == 2 and state["config"]["solver"]["max_iter"] == 3
    assert set(state) >= {"model", "optimizer", "scaler", "rng", "class_names"}
    assert state["class_names"] == dataset.class_names
    assert metrics["iteration"] == 3
    assert not [n for n in os.listdir(out) if ".tmp" in n]  # no temp files left behind


def test_find_last_checkpoint_without_marker(tmp_path):
    assert ckpt.find_last_checkpoint(str(tmp_path)) is None
    for it in (5, 10):
        ckpt.save_checkpoint(str(tmp_path), ckpt.checkpoint_name(it), {"iteration": it})
    assert ckpt.find_last_checkpoint(str(tmp_path)).endswith("model_0000010.pth")
    os.remove(tmp_path / "last_checkpoint")
    assert ckpt.find_last_checkpoint(str(tmp_path)).endswith("model_0000010.pth")


def test_bf16_autocast_on_cpu_and_fp16_needs_cuda(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "bf16"), max_iter=2, amp="bf16")
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in losses(cfg.output_dir).values())
    cfg = tiny_config(str(tmp_path / "fp16"), amp="fp16")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))


def test_periodic_evaluation_is_logged(tiny_coco, tmp_path):
    json_path, images = tiny_coco
    cfg = tiny_config(str(tmp_path / "out"), max_iter=4)
    cfg.eval_period = 2
    val = CocoInstanceDataset(json_path, images, transforms=None, use_masks=False, use_points=False)
    metrics = main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg), val_set=val)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "segm" in r]
    assert [r["iter"] for r in evals] == [2, 4]  # every eval_period, and at the end
    assert evals[-1]["segm"] == metrics["segm"] and "AP50" in metrics["bbox"]


def test_periodic_evaluation_on_a_fixed_subset_draws_the_ap_curve(tiny_coco, tmp_path):
    json_path, images = tiny_coco
    cfg = tiny_config(str(tmp_path / "out"), max_iter=4)
    cfg.eval_period, cfg.eval_num_images = 2, 1
    val = CocoInstanceDataset(json_path, images, transforms=None, use_masks=False, use_points=False)
    assert len(val) > 1
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg), val_set=val)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "segm" in r]
    # the periodic one says it ran on 1 image; the final one ran on all (no subset key)
    assert [(r["iter"], r.get("eval_num_images")) for r in evals] == [(2, 1), (4, None)]
    ap_curve = os.path.join(cfg.output_dir, "ap_curve.png")
    from PIL import Image

    assert Image.open(ap_curve).size[0] > 100  # a real PNG, drawn by matplotlib


def test_tensorboard_event_files_hold_the_logged_losses_and_ap(tiny_coco, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    json_path, images = tiny_coco
    cfg = tiny_config(str(tmp_path / "out"), max_iter=4)
    cfg.tensorboard, cfg.log_period, cfg.eval_period = True, 2, 2
    val = CocoInstanceDataset(json_path, images, transforms=None, use_masks=False, use_points=False)
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg), val_set=val)
    events = EventAccumulator(os.path.join(cfg.output_dir, "tensorboard"))
    events.Reload()
    logged = losses(cfg.output_dir)  # metrics.jsonl, the reference
    total = [(e.step, e.value) for e in events.Scalars("total_loss")]
    assert total == [(it, pytest.approx(logged[it]["total_loss"], rel=1e-6)) for it in (2, 4)]
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if "bbox" in r]
    ap = [(e.step, e.value) for e in events.Scalars("bbox/AP")]
    assert ap == [(r["iter"], pytest.approx(r["bbox"]["AP"], abs=1e-4)) for r in evals] and len(ap) == 2
    assert {"lr", "bbox/AP50"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_the_package_is_a_clear_error(monkeypatch):
    import sys

    from pointsup.utils.logging import open_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install "pointsup\[tensorboard\]"'):
        open_tensorboard("unused")


def test_compile_switch_trains_the_compiled_module_and_saves_the_plain_one(tiny_coco, tmp_path, monkeypatch):
    """model.compile=true: the training step runs torch.compile's module (inductor, as on a GPU
    box), with the same losses and weights as the eager run; the checkpoint keeps run.model's
    own keys (no `_orig_mod.` prefix), so it loads into an uncompiled model."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.skip(f"torch.compile's inductor backend needs a C++ compiler on CPU; {compiler} is not on PATH")
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: compiled.append(module) or real_compile(module, **kw))
    results = {}
    for switch in (False, True):
        cfg = tiny_config(str(tmp_path / f"compile_{switch}"), max_iter=2)
        cfg.model.compile = switch
        model = new_model()
        main(cfg, model=model, train_set=train_set(tiny_coco, cfg), val_set=None)
        results[switch] = (model, losses(cfg.output_dir))
    assert len(compiled) == 1 and compiled[0] is results[True][0]  # only the compile=true run
    for it in (1, 2):
        assert results[True][1][it]["total_loss"] == pytest.approx(results[False][1][it]["total_loss"], rel=1e-4)
    state = ckpt.load_checkpoint(os.path.join(str(tmp_path / "compile_True"), "model_final.pth"))["model"]
    assert set(state) == set(new_model().state_dict())
    for name, value in results[False][0].state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_cpu_training_keeps_conv_weights_in_the_layout_of_their_gradients():
    """On CPU the activations are channels-last, so oneDNN returns conv-weight gradients
    channels-last; training_module puts the weights in that layout so that neither autograd
    (gradient layout contract) nor DDP's buckets re-lay every gradient out per step."""
    from pointsup.config import load_config
    from pointsup.models import build_model
    from pointsup.structures import InstanceTargets
    from pointsup.train import Run, training_module

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(root, "configs", "synthetic", "mask_rcnn_P10.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = Run(cfg=cfg, device=torch.device("cpu"), model=model, optimizer=None, scaler=None, train_set=None,
              val_set=None, rank=0, world_size=1)
    module = training_module(run)
    convs = {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.requires_grad}
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs.values())
    assert all(torch.equal(p, reference[n]) for n, p in model.named_parameters())  # same values

    incoming = {}  # the gradient as the backward pass produces it, before autograd stores it
    for name, p in convs.items():
        p.register_hook(lambda grad, name=name: incoming.__setitem__(name, grad))
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 48.0], [30.0, 20.0, 60.0, 60.0]])
    coords = boxes[:, None, :2] + torch.rand(2, 10, 2, generator=g) * 20
    targets = [InstanceTargets(boxes, torch.tensor([0, 2]), (64, 64), None, coords, (torch.rand(2, 10, generator=g) > 0.5).float())]
    module.train()
    sum(module(torch.rand(1, 3, 64, 64, generator=g) * 255, [(64, 64)], targets).values()).backward()
    backbone = [n for n in incoming if n.startswith("backbone.")]
    assert backbone and all(incoming[n].stride() == convs[n].stride() for n in backbone), \
        [n for n in backbone if incoming[n].stride() != convs[n].stride()]
