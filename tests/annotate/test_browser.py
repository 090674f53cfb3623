"""End to end in headless Chromium: label with keys and buttons, kill -9 and restart the
server mid-job, a second tab on the same point, skip, undo, review-flip, check the saved
JSON point by point, and train on it with `pointsup.train`.

Needs Debian's `chromium` + `chromium-driver` and `pip install selenium` (the `dev` extra);
`.ci/run` installs them. Without a browser the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.simulate_points import sample_points_in_box
from tests.annotate.helpers import ToolProcess, box_dataset, tool_args

NUM_POINTS = 4
PURPLE, GREEN = (160, 32, 240), (0, 208, 0)  # the marker colours of static/annotate.js


def _browser_or_skip():
    """(chromium, chromedriver, selenium webdriver module).

    No browser: skip locally, fail under CI (`.ci/run` installs it, so it must run there).
    selenium is in the `dev` extra, like pytest itself: missing, it is an error.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, found in [("chromium", chromium), ("chromedriver", driver)] if not found]
    if missing:
        reason = f"no browser: {' and '.join(missing)} not found (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[dev]'")
    return chromium, driver, webdriver


@pytest.fixture
def browser():
    chromium, driver_path, webdriver = _browser_or_skip()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def _expected_coords(coco: dict, seed: int) -> dict[int, np.ndarray]:
    """The points the tool must show: simulate_points' sampler, file order, one generator."""
    rng = np.random.default_rng(seed)
    out = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        out[ann["id"]] = sample_points_in_box(rng, (x, y, min(x + w, 160), min(y + h, 120)), NUM_POINTS)
    return out


def test_label_kill_restart_review_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    json_path, image_dir = box_dataset(str(tmp_path))
    output = str(tmp_path / "labels.json")
    args = tool_args(json_path, image_dir, output, NUM_POINTS)

    def wait_for(attribute: str, value: str) -> None:
        """Wait until <body data-...> says the page shows `value` (e.g. point "2:1")."""
        WebDriverWait(browser, 20).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(attribute) == value,
            message=f"page never showed {attribute}={value!r}",
        )

    def press(key: str, then: str) -> None:
        ActionChains(browser).send_keys(key).perform()
        wait_for("data-point", then)

    def click(button_id: str, then: str) -> None:
        browser.find_element(By.ID, button_id).click()
        wait_for("data-point", then)

    with ToolProcess(args) as tool:
        browser.get(tool.url)
        wait_for("data-point", "1:0")
        press("f", "1:1")
        press("j", "1:2")
        screenshot = _check_screenshot(browser, tmp_path)
        press("f", "1:3")
        press(Keys.BACKSPACE, "1:2")  # undo: the last answer (point 3 = object) is taken back
        press("j", "1:3")
        press("j", "2:0")  # object 1 = [1, 0, 0, 0]; next is object 2
        press("f", "2:1")
        press("u", "2:0")  # undo with u
        press("j", "2:1")
        press("f", "2:2")  # object 2 so far [0, 1, ., .]
        tool.kill()  # SIGKILL mid-job: only the journal has the last labels

    with ToolProcess(args) as tool:
        browser.get(tool.url)
        wait_for("data-point", "2:2")  # continues at the first unlabelled point
        first_tab = browser.current_window_handle
        browser.switch_to.new_window("tab")  # a second tab on the same job shows the same point
        browser.get(tool.url)
        wait_for("data-point", "2:2")
        second_tab = browser.current_window_handle
        browser.switch_to.window(first_tab)
        click("btn-object", "2:3")  # answered in the first tab ...
        browser.switch_to.window(second_tab)
        press("j", "2:3")  # ... so the second tab's answer is refused and it moves on
        assert "another tab" in browser.find_element(By.ID, "message").text
        browser.close()
        browser.switch_to.window(first_tab)
        click("btn-background", "4:0")  # object 2 = [0, 1, 1, 0]; the crowd box 3 is never asked
        press("f", "4:1")
        press("s", "5:0")  # skip object 4 ...
        press("u", "4:1")  # ... and take the skip back
        for key, then in [("j", "4:2"), ("f", "4:3"), ("j", "5:0")]:
            press(key, then)  # object 4 = [1, 0, 1, 0]
        press("j", "5:1")
        press("s", "done")  # object 5: skipped after one label
        assert "All objects are done" in browser.find_element(By.ID, "done").text

        browser.get(tool.url + "review?ann=1")
        wait_for("data-object", "1:1000")
        browser.find_element(By.CSS_SELECTOR, "#review-svg circle.pt[data-index='1']").click()
        wait_for("data-object", "1:1100")  # review flip: object 1 = [1, 1, 0, 0]
        assert tool.stop() == 0

    # The saved file, point by point, against the keys pressed.
    with open(json_path) as f:
        coco = json.load(f)
    with open(output) as f:
        saved = json.load(f)
    expected_labels = {1: [1, 1, 0, 0], 2: [0, 1, 1, 0], 4: [1, 0, 1, 0]}
    expected_coords = _expected_coords(coco, seed=0)
    by_id = {a["id"]: a for a in saved["annotations"]}
    for ann_id, labels in expected_labels.items():
        assert by_id[ann_id]["point_status"] == "complete"
        assert by_id[ann_id]["point_labels"] == labels
        np.testing.assert_allclose(by_id[ann_id]["point_coords"], expected_coords[ann_id], atol=1e-9)
    assert by_id[3]["point_status"] == "not_queued" and "point_labels" not in by_id[3]
    assert by_id[5]["point_status"] == "skipped" and "point_labels" not in by_id[5]
    timing = saved["annotate"]["objects"]
    assert all(ms is not None and ms >= 0 for ann_id in expected_labels for ms in timing[str(ann_id)]["ms"])
    assert timing["5"]["labels"] == [0, None, None, None]
    assert os.path.getsize(output + ".journal") == 0  # a clean exit folds the journal into the file

    # pointsup's training data set reads the file unchanged.
    dataset = CocoInstanceDataset(output, image_dir, use_masks=False)
    targets = dataset.load_targets(0)  # image 1: objects 1 and 2 (the crowd box is dropped)
    assert targets.point_labels.tolist() == [expected_labels[1], expected_labels[2]]
    targets = dataset.load_targets(1)  # image 2: object 4 and the skipped object 5 (no points)
    assert targets.point_labels.tolist() == [expected_labels[4], [-1, -1, -1, -1]]

    assert os.path.getsize(screenshot) > 0

    # ... and pointsup.train trains on the file as it is (two tiny iterations, points only).
    _train_two_iterations(output, image_dir, str(tmp_path / "train"))


def _train_two_iterations(labels_json: str, image_dir: str, out: str) -> None:
    overrides = [
        f"data.train_json={labels_json}", f"data.train_images={image_dir}",
        f"data.val_json={labels_json}", f"data.val_images={image_dir}",  # box AP only: no masks
        "model.mask_head.supervision=points", "solver.max_iter=2", "solver.ims_per_batch=2",
        "solver.warmup_iters=1", "log_period=1", "num_vis=0", "data.num_workers=0",
        "data.min_size_train=[64]", "data.max_size_train=96", "data.min_size_test=64", "data.max_size_test=96",
        "model.backbone.fpn_channels=32", "model.roi_heads.fc_dim=64", "model.mask_head.conv_dim=32",
        "model.mask_head.num_conv=1", "model.roi_heads.batch_size_per_image=64",
    ]
    run = subprocess.run([sys.executable, "-m", "pointsup.train", "--output-dir", out, "--set", *overrides],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        steps = [r for r in map(json.loads, f) if "loss_mask" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss_mask"]) and r["loss_mask"] > 0 for r in steps)


def _check_screenshot(browser, tmp_path) -> str:
    """Save the page and check it is not blank: both markers and the two views are drawn."""
    path = str(tmp_path / "annotate.png")
    browser.save_screenshot(path)
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    assert pixels.std() > 10, "blank screenshot"

    def count(colour):
        return int((np.abs(pixels - np.array(colour)).sum(axis=-1) < 60).sum())

    assert count(PURPLE) > 30, "no purple point marker on the page"
    assert count(GREEN) > 30, "no green box around the point"
    copy_to = os.environ.get("POINTSUP_SCREENSHOT")  # e.g. docs/images/annotate_tool.png
    if copy_to:
        shutil.copyfile(path, copy_to)
    return path
