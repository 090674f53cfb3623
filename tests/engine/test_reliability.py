"""Training runs that never destroy a user's files and can always be recovered (issue 12):
refusing a folder that holds a run, nothing written before the config validates, resume
falling back to the newest intact checkpoint, checkpoint_keep_last, divergence stops that
never point at a poisoned checkpoint, and SIGINT / SIGTERM saving the current iteration."""

import json
import os
import signal

import pytest
import torch

from pointsup import checkpoint as ckpt
from pointsup.config import ConfigError
from pointsup.divergence import TrainingDiverged
from pointsup.interrupt import TrainingInterrupted
from pointsup.train import main

from .fakes import TinyDetector, tiny_config
from .test_main_job import TINY
from .test_train_loop import new_model, tiny_coco, train_set  # noqa: F401 (tiny_coco: the module's fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def logged(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {r["iter"]: r for r in map(json.loads, f) if "total_loss" in r}


def snapshot(folder):
    """{name: bytes} of every file in `folder` (recursively)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def max_abs(state_dict):
    return max(v.abs().max().item() for v in state_dict.values() if v.is_floating_point())


# ---- never destroy a run ------------------------------------------------------------------


def test_new_run_refuses_a_folder_holding_a_run_and_overwrite_replaces_it(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "out"), max_iter=3)
    cfg.checkpoint_period = 2
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    before = snapshot(cfg.output_dir)
    assert "model_0000002.pth" in before and "metrics.jsonl" in before

    with pytest.raises(FileExistsError, match=r"already holds a training run.*--resume.*--overwrite"):
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    assert snapshot(cfg.output_dir) == before  # not one byte changed

    (tmp_path / "out" / "notes.txt").write_text("mine")  # a user's own file in the folder
    cfg.checkpoint_period = 1000
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg), overwrite=True)
    after = set(os.listdir(cfg.output_dir))
    assert "model_0000002.pth" not in after  # nothing of the old run beside the new one
    assert {"model_final.pth", "metrics.jsonl", "notes.txt"} <= after
    assert sorted(logged(cfg.output_dir)) == [1, 2, 3]


def test_cli_refuses_a_run_folder_before_writing_anything(tiny_coco, tmp_path):
    from pointsup import train

    cfg = tiny_config(str(tmp_path / "out"), max_iter=1)
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    before = snapshot(cfg.output_dir)
    with pytest.raises(FileExistsError, match="already holds a training run"):
        train.cli(["--output-dir", cfg.output_dir, "--set", f"data.synthetic_dir={tmp_path / 'synthetic'}", *TINY])
    assert snapshot(cfg.output_dir) == before


def test_invalid_enum_is_refused_before_anything_is_written(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "out"))
    cfg.model.mask_head.supervision = "pointz"
    with pytest.raises(ConfigError, match=r"model.mask_head.supervision='pointz'.*'masks', 'points'"):
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    assert not os.path.exists(cfg.output_dir)


def test_crash_at_the_first_step_leaves_a_resumed_run_untouched(tiny_coco, tmp_path):
    """A resumed run that fails before training (a model that does not fit the checkpoint)
    must not have emptied metrics.jsonl or rewritten config.yaml."""
    cfg = tiny_config(str(tmp_path / "out"), max_iter=3)
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    before = snapshot(cfg.output_dir)
    cfg.solver.max_iter = 5
    with pytest.raises(RuntimeError, match="size mismatch"):
        main(cfg, resume=True, model=new_model(num_classes=3), train_set=train_set(tiny_coco, cfg))
    assert snapshot(cfg.output_dir) == before


# ---- resume from the newest intact checkpoint ---------------------------------------------


def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "out"), max_iter=4)
    cfg.checkpoint_period = 1
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    out = cfg.output_dir
    final = os.path.join(out, "model_final.pth")
    with open(final, "rb") as f:
        data = f.read()
    with open(final, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated (disk full, half-copied)
    with open(os.path.join(out, "model_0000003.pth"), "wb") as f:
        f.write(b"\x00" * 100)  # garbage

    cfg.solver.max_iter = 5
    with pytest.warns(UserWarning, match=r"model_final.pth.*model_0000003.pth.*Resuming from .*model_0000002.pth"):
        main(cfg, resume=True, model=new_model(), train_set=train_set(tiny_coco, cfg))
    assert sorted(logged(out)) == [1, 2, 3, 4, 5]  # continued at iteration 2, steps 3..5 redone


def test_resume_with_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "model_0000002.pth").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint.*model_0000002.pth"):
        ckpt.load_resume_checkpoint(str(tmp_path))


def test_resume_skips_a_checkpoint_with_poisoned_weights(tmp_path):
    good = {"model": {"w": torch.ones(3)}, "optimizer": {}, "iteration": 2}
    bad = {"model": {"w": torch.full((3,), 2.3e9)}, "optimizer": {}, "iteration": 4}
    ckpt.save_checkpoint(str(tmp_path), "model_0000002.pth", good)
    ckpt.save_checkpoint(str(tmp_path), "model_0000004.pth", bad)
    with pytest.warns(UserWarning, match="poisoned weights"):
        path, state = ckpt.load_resume_checkpoint(str(tmp_path), max_weight_abs=1e6)
    assert path.endswith("model_0000002.pth") and state["iteration"] == 2


def test_checkpoint_keep_last(tiny_coco, tmp_path):
    cfg = tiny_config(str(tmp_path / "out"), max_iter=6)
    cfg.checkpoint_period, cfg.checkpoint_keep_last = 1, 2
    main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    names = sorted(n for n in os.listdir(cfg.output_dir) if n.endswith(".pth"))
    assert names == ["model_0000004.pth", "model_0000005.pth", "model_final.pth"]


# ---- divergence ---------------------------------------------------------------------------


def diverging_config(out_dir, **kw):
    """A huge LR: the tiny model's loss jumps, the weights explode, then the loss overflows."""
    cfg = tiny_config(out_dir, max_iter=30, base_lr=1e3, warmup_iters=1, steps=[], **kw)
    cfg.checkpoint_period = 1  # a checkpoint every iteration: the worst case
    return cfg


def test_non_finite_loss_stop_keeps_the_last_good_checkpoint(tiny_coco, tmp_path):
    """Weight check off: only the loss tells that the run diverged. The checkpoints written
    after the loss began to explode are never pointed at, and the stop names the last good one."""
    cfg = diverging_config(str(tmp_path / "out"))
    cfg.divergence_max_weight = 0.0
    with pytest.raises(FloatingPointError, match=r"loss is not finite at iteration \d+: loss_box=.*"
                                                 r"last good checkpoint is .*model_0000001.pth") as info:
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    assert isinstance(info.value, TrainingDiverged)
    out = cfg.output_dir
    last = ckpt.find_last_checkpoint(out)
    assert last.endswith("model_0000001.pth")
    assert max_abs(ckpt.load_checkpoint(last)["model"]) < 1e3  # healthy: the initial weights' scale
    # --resume takes it, whatever else is on disk
    path, _ = ckpt.load_resume_checkpoint(out, cfg.divergence_max_weight)
    assert path == last
    # the one written as the loss jumped is set aside, not resumable
    assert all(max_abs(ckpt.load_checkpoint(p)["model"]) < 1e3 for p in ckpt.list_checkpoints(out))


def test_exploding_weights_stop_before_a_checkpoint_is_written(tiny_coco, tmp_path):
    cfg = diverging_config(str(tmp_path / "out"))
    cfg.divergence_loss_spike = 0.0  # no loss-spike detection: the weights alone must stop it
    with pytest.raises(TrainingDiverged, match=r"weights diverged by iteration \d+: max \|weight\| .* exceeds 1e\+06"):
        main(cfg, model=new_model(), train_set=train_set(tiny_coco, cfg))
    for path in ckpt.list_checkpoints(cfg.output_dir):
        assert max_abs(ckpt.load_checkpoint(path)["model"]) <= 1e6, path


def test_a_loss_spike_skips_checkpoints_but_training_goes_on(tiny_coco, tmp_path):
    class SpikeOnce(TinyDetector):
        def forward(self, *args, **kw):
            losses = super().forward(*args, **kw)
            if self.training and self.calls == 3:
                losses["loss_box"] = losses["loss_box"] + 100.0  # a bad batch, weights unharmed
            return losses

    cfg = tiny_config(str(tmp_path / "out"), max_iter=5)
    cfg.checkpoint_period = 1
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="loss right after .*model_0000002.pth is a spike"):
        main(cfg, model=SpikeOnce(), train_set=train_set(tiny_coco, cfg))
    names = sorted(os.listdir(cfg.output_dir))
    assert "model_0000001.pth" in names and "model_0000002.diverged.pth" in names
    assert "model_0000003.pth" not in names and "model_0000004.pth" not in names  # within the window
    assert ckpt.find_last_checkpoint(cfg.output_dir).endswith("model_final.pth")


# ---- SIGINT / SIGTERM ---------------------------------------------------------------------


class SignalAtCall(TinyDetector):
    """Sends itself `signum` during its `at_call`-th training forward (as a cluster would)."""

    def __init__(self, signum, at_call, **kw):
        super().__init__(**kw)
        self.signum, self.at_call = signum, at_call

    def forward(self, *args, **kw):
        if self.training and self.calls + 1 == self.at_call:
            os.kill(os.getpid(), self.signum)
        return super().forward(*args, **kw)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_current_iteration_and_resume_is_exact(tiny_coco, tmp_path, signum):
    """A signal during iteration 3 (no periodic checkpoint yet): the iteration finishes, a
    checkpoint of iteration 3 is saved, the run stops; resuming from it gives the same losses
    and final weights as an uninterrupted run (flips and dropout use the restored RNG)."""
    full_cfg = tiny_config(str(tmp_path / "full"), max_iter=5)
    model_full = new_model(dropout=0.3)
    main(full_cfg, model=model_full, train_set=train_set(tiny_coco, full_cfg, random_flip=True))
    full = logged(full_cfg.output_dir)

    cfg = tiny_config(str(tmp_path / "run"), max_iter=5)
    previous_handler = signal.getsignal(signum)
    torch.manual_seed(123)
    with pytest.raises(TrainingInterrupted, match=rf"{signal.Signals(signum).name} received: stopped after iteration 3"):
        main(cfg, model=SignalAtCall(signum, at_call=3, dropout=0.3), train_set=train_set(tiny_coco, cfg, random_flip=True))
    assert signal.getsignal(signum) is previous_handler  # handlers restored
    assert ckpt.find_last_checkpoint(cfg.output_dir).endswith("model_0000003.pth")

    model_resumed = new_model(dropout=0.3)
    torch.manual_seed(999)  # the resumed process starts from another global RNG state
    main(cfg, resume=True, model=model_resumed, train_set=train_set(tiny_coco, cfg, random_flip=True))
    resumed = logged(cfg.output_dir)
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for it in (4, 5):
        assert resumed[it]["total_loss"] == pytest.approx(full[it]["total_loss"], rel=1e-6, abs=1e-7), it
    for (name, a), b in zip(model_full.state_dict().items(), model_resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


# ---- the table ----------------------------------------------------------------------------


def test_every_row_of_docs_reliability_names_an_existing_test():
    """docs/RELIABILITY.md: at least 30 rows; each row's last column names `file::test` (or
    `::test` in the file named before, or "same test" / "both tests above"), and it exists."""
    import re

    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(os.path.dirname(tests_dir), "docs", "RELIABILITY.md")) as f:
        rows = [line for line in f if re.match(r"^\| \d+ \|", line)]
    assert len(rows) >= 30
    file, previous_ok = None, False
    for row in rows:
        last_column = row.rstrip().rstrip("|").rsplit("|", 1)[1]
        named = re.findall(r"`([\w/]+\.py)?::(test_\w+)", last_column)
        if not named:
            assert previous_ok and re.search(r"same test|tests above", last_column), f"row without a test: {row}"
            continue
        for file_named, test in named:
            file = file_named or file
            with open(os.path.join(tests_dir, file)) as f:
                assert f"def {test}(" in f.read(), f"{file}::{test} does not exist (row: {row[:60]})"
        previous_ok = True
