"""A trained model outside mnist-dist, on one real MNIST run (`--config fast_mnist`, ~99% test accuracy):

- `export --format hub OUT --repo-id ID` writes model.pt2 (torch.export) and model.onnx (torch's dynamo exporter)
  beside the weights. In a Python environment without mnist-dist, each classifies the real 10,000 test digits as
  mnist-dist's own model does, within 0.2 points of the run's test accuracy.
- Every python block of the card runs as written, offline against a Hub cache (HF_HUB_OFFLINE=1): the mnist-dist
  one with mnist-dist, the PyTorch and onnxruntime ones in that environment without it.
- HubModel.from_pretrained(ID) (huggingface_hub's PyTorchModelHubMixin) gives the run's model, logit for logit.
- `mnist-dist demo` serves the draw-a-digit page: gradio_client's /predict on real test digits drawn dark on white
  agrees with `predict`; headless Chromium (Debian's, driven by selenium) draws digits with mouse strokes on the
  sketchpad and reads the right label; `export --format space` serves the same page from the Space's app.py.
"""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_dist.data import loaders, sources
from mnist_dist.run import artifact

from helpers import REPO, VENV_BIN, lay_out_hub_cache, on_page, run, run_cli, wait_until

REPO_ID = "someone/mnist-cnn"
pytestmark = pytest.mark.slow  # a real MNIST run, processes, a browser


@pytest.fixture(scope="module")
def hub_folder(fast_mnist_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("anywhere") / "hub"
    run_cli(["export", str(fast_mnist_run), "--format", "hub", str(out), "--repo-id", REPO_ID])
    return out


@pytest.fixture(scope="module")
def hub_env(hub_folder, tmp_path_factory) -> dict:
    """An environment that reads REPO_ID from a Hub cache only, as huggingface_hub lays one out."""
    cache = tmp_path_factory.mktemp("hub_cache")
    lay_out_hub_cache(cache, REPO_ID, hub_folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return {**env, "HOME": str(tmp_path_factory.mktemp("home")), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
            "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """The python of a fresh venv that has torch, onnxruntime and huggingface_hub but not mnist-dist: it sees the
    test venv's site-packages through one .pth line, and Python reads no .pth file of a folder added that way, so
    mnist-dist's editable install (a .pth file there) is not on its path."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    probe = "import importlib.util, onnxruntime, torch, huggingface_hub; print(importlib.util.find_spec('mnist_dist'))"
    found = run([str(python), "-c", probe], cwd=venv).stdout.strip()
    assert found == "None", found
    return python


# What someone without mnist-dist writes: the IDX file read with numpy, config.json's mean and std, the two files.
CLASSIFY_TEST_SET = """
import json, sys
import numpy as np, onnxruntime, torch
folder, images_file = sys.argv[1], sys.argv[2]
info = json.load(open(f"{folder}/config.json"))
images = np.fromfile(images_file, np.uint8, offset=16).reshape(-1, 1, 28, 28)
x = ((images / 255.0 - info["mean"]) / info["std"]).astype(np.float32)
program = torch.export.load(f"{folder}/model.pt2").module()
session = onnxruntime.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
with torch.no_grad():
    pt2 = [program(torch.from_numpy(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)]
onnx = [session.run(None, {"input": x[i:i + 500]})[0].argmax(1) for i in range(0, len(x), 500)]
print(json.dumps({"pt2": torch.cat(pt2).tolist(), "onnx": np.concatenate(onnx).tolist()}))
"""


def test_pt2_and_onnx_classify_the_real_test_set_without_mnist_dist(fast_mnist_run, hub_folder, bare_python,
                                                                    mnist_dir, tmp_path):
    assert {"model.pt2", "model.onnx"} <= {p.name for p in hub_folder.iterdir()}
    out = run([str(bare_python), "-c", CLASSIFY_TEST_SET, str(hub_folder), str(mnist_dir / "t10k-images-idx3-ubyte")],
              cwd=tmp_path).stdout
    found = {name: torch.tensor(p) for name, p in json.loads(out).items()}

    test = sources.load_idx(mnist_dir, "test")
    model, info = artifact.load_model(fast_mnist_run)
    with torch.no_grad():
        ours = model(loaders.normalize(test.images, info["mean"], info["std"])).argmax(1)
    summary = json.loads((fast_mnist_run / "summary.json").read_text())
    for name, predicted in found.items():
        accuracy = float((predicted == test.labels).float().mean())
        print(f"{name} without mnist-dist: {accuracy:.4f} on the 10,000 test digits (run: {summary['test_accuracy']})")
        assert abs(accuracy - summary["test_accuracy"]) <= 0.002, name
        assert int((predicted != ours).sum()) <= 2, name  # float32 sums in another order may flip a near tie


def python_blocks(card: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", card, re.S | re.M)


def test_every_python_block_of_the_card_runs_as_written(hub_folder, hub_env, bare_python, tmp_path):
    card = (hub_folder / "README.md").read_text()
    blocks = python_blocks(card)
    assert len(blocks) == 3 and all(f'"{REPO_ID}"' in block for block in blocks)
    assert "OWNER/NAME" not in card and f"mnist-dist demo {REPO_ID}" in card
    assert "mnist_dist" in blocks[0] and not any("mnist_dist" in block for block in blocks[1:])
    classes = json.loads((hub_folder / "config.json").read_text())["classes"]
    for block, python in zip(blocks, [VENV_BIN / "python", bare_python, bare_python]):
        proc = run([str(python), "-c", block], base_env=hub_env, cwd=tmp_path, check=False)
        assert proc.returncode == 0, block + proc.stderr[-3000:]
        assert proc.stdout.strip() in classes, proc.stdout


def test_from_pretrained_by_repo_id_gives_the_runs_model(fast_mnist_run, hub_env, tmp_path):
    code = f"""
import json, torch
from mnist_dist.outputs.hub import HubModel
from mnist_dist.run import artifact
hub_model = HubModel.from_pretrained("{REPO_ID}")
model, info = artifact.load_model(__import__("pathlib").Path("{fast_mnist_run}"))
x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    print(json.dumps({{"same": torch.equal(hub_model(x), model(x)), "training": hub_model.training,
                      "info": {{k: hub_model.info[k] == v for k, v in info.items()}}}}))
"""
    out = json.loads(run([str(VENV_BIN / "python"), "-c", code], base_env=hub_env, cwd=tmp_path).stdout)
    assert out == {"same": True, "training": False, "info": {k: True for k in out["info"]}}
    assert {"name", "mean", "std", "classes"} <= set(out["info"])


# ----------------------------------------------------------------------------- the demo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serving(cmd: list[str], env: dict, cwd: Path, port: int):
    """Start a page server, wait until it answers on 127.0.0.1:port, yield its URL, stop it."""
    log = cwd / f"server_{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: proc.poll() is not None or answers(url), timeout_s=180, what=f"{url} to answer")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def demo_url(fast_mnist_run, hub_env, tmp_path_factory):
    port = free_port()
    cmd = [str(VENV_BIN / "mnist-dist"), "demo", str(fast_mnist_run), "--port", str(port)]
    with serving(cmd, hub_env, tmp_path_factory.mktemp("demo"), port) as url:
        yield url


def label_of(prediction: dict) -> tuple[str, dict[str, float]]:
    """gradio_client's Label value: the top class and {class: probability} of the top 3."""
    return prediction["label"], {c["label"]: c["confidence"] for c in prediction["confidences"]}


def test_the_demo_api_agrees_with_predict_on_real_test_digits(fast_mnist_run, demo_url, mnist_dir, tmp_path):
    from gradio_client import Client, handle_file
    test = sources.load_idx(mnist_dir, "test")
    pick = list(range(0, 10000, 500))  # 20 digits, every class
    for k, i in enumerate(pick):
        on_page(test.images[i].numpy(), k).save(tmp_path / f"d{k:02d}.png")  # dark ink on a white page
    rows = [json.loads(line) for line in run_cli(["predict", str(fast_mnist_run), str(tmp_path), "--json"]).stdout.splitlines()]
    by_file = {Path(r["file"]).name: r for r in rows}
    client = Client(demo_url, verbose=False)
    right = 0
    for k, i in enumerate(pick):
        top, probabilities = label_of(client.predict(handle_file(str(tmp_path / f"d{k:02d}.png")), api_name="/predict"))
        expected = by_file[f"d{k:02d}.png"]
        assert top == expected["class"]
        assert len(probabilities) == 3
        for entry in expected["top_k"]:
            assert probabilities[entry["class"]] == pytest.approx(entry["prob"], abs=1e-5)
        right += top == str(int(test.labels[i]))
    assert right >= 19, right


def chromium():
    """Debian's chromium through its chromedriver, headless (nothing downloads a browser: both paths are given)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("CI"):
            raise RuntimeError("chromium and chromium-driver missing: .ci/setup-tests must apt-get install them")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def draw(driver, canvas, strokes: list[list[tuple[int, int]]]) -> None:
    """Mouse strokes on the canvas, each a polyline of points relative to its centre, ten moves per segment."""
    from selenium.webdriver.common.action_chains import ActionChains
    for points in strokes:
        chain = ActionChains(driver, duration=20).move_to_element_with_offset(canvas, *points[0]).click_and_hold()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            for k in range(1, 11):
                chain.move_to_element_with_offset(canvas, round(x0 + (x1 - x0) * k / 10),
                                                  round(y0 + (y1 - y0) * k / 10))
        chain.release().perform()


# Digits as a hand draws them on the 280x280 sketchpad, in strokes that do not all touch.
DRAWN = {
    "7": [[(-80, -100), (80, -100)], [(80, -100), (-10, 110)]],
    "1": [[(5, -110), (0, 110)]],
    "4": [[(-30, -110), (-75, 20), (5, 20)], [(35, -60), (35, 115)]],  # the arm drawn apart from the stem
}


def test_a_browser_draws_digits_on_the_sketchpad_and_reads_the_label(demo_url, tmp_path):
    """Headless Chromium draws each digit with the mouse, as a person would (open the page, pick the brush, draw,
    read the guess). A fresh page for each digit: clearing the canvas while the last stroke's answer is still on
    its way lost the clearing on a loaded machine (the label kept the previous guess for a minute). With
    MNIST_DIST_DEMO_SCREENSHOT=PATH the page with its last digit is saved there (README's picture: docs/demo.png)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def brush():
        return driver.find_element(By.CSS_SELECTOR, "button[aria-label='Brush']")

    driver = chromium()
    guesses: dict[str, str] = {}
    try:
        for digit, strokes in DRAWN.items():
            driver.get(demo_url)
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[aria-label='Brush']"))
            brush().click()  # the page starts with no tool in hand
            wait.until(lambda d: "highlight" in brush().get_attribute("class"))
            draw(driver, driver.find_elements(By.CSS_SELECTOR, "canvas")[-1], strokes)
            guesses[digit] = final_label(driver, digit)
    except TimeoutException:
        driver.save_screenshot(str(tmp_path / "timed_out.png"))
        raise AssertionError(f"the page did not answer (drawn so far: {guesses}; {tmp_path / 'timed_out.png'}):\n"
                             f"{driver.execute_script('return document.body.innerText')}") from None
    else:
        driver.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        driver.quit()
    print("drawn -> the page's guess:", guesses)
    assert all(guess == digit for digit, guess in guesses.items()), guesses
    if os.environ.get("MNIST_DIST_DEMO_SCREENSHOT"):
        shutil.copyfile(tmp_path / "demo.png", os.environ["MNIST_DIST_DEMO_SCREENSHOT"])


def final_label(driver, expected: str, settled_s: float = 10.0, timeout_s: float = 60.0) -> str:
    """The label once it shows `expected`, or the guess it has kept for settled_s (each stroke is answered in turn:
    a label can show a stroke before the last one). Raises TimeoutException when no label appears at all."""
    from selenium.common.exceptions import TimeoutException

    seen, since, deadline = "", time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = label_text(driver)
        if text == expected:
            return text
        if text != seen:
            seen, since = text, time.monotonic()
        elif text and time.monotonic() - since > settled_s:
            return text
        time.sleep(0.1)
    if seen:
        return seen
    raise TimeoutException(f"no label after {timeout_s} s")


def label_text(driver) -> str:
    """The Label's top class, as the page shows it ('' while it shows none)."""
    # One read in the page (the Label is re-rendered as results arrive: an element found first can be gone next).
    query = "document.querySelector(\"[data-testid='label-output-value']\")"
    return driver.execute_script(f"return ({query}?.textContent ?? '').trim()")


def test_an_exported_space_serves_the_same_page(fast_mnist_run, hub_env, tmp_path, mnist_dir):
    from gradio_client import Client, handle_file
    from huggingface_hub import SpaceCard
    space = tmp_path / "space"
    run_cli(["export", str(fast_mnist_run), "--format", "space", str(space)])
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "model.json", "model.safetensors",
                                                       "requirements.txt"]
    card = SpaceCard.load(space / "README.md")
    assert (card.data.sdk, card.data.app_file, card.data.license) == ("gradio", "app.py", "mit")
    assert (space / "requirements.txt").read_text().split() == ["mnist-dist[demo]"]
    test = sources.load_idx(mnist_dir, "test")
    on_page(test.images[0].numpy(), 0).save(tmp_path / "seven.png")
    port = free_port()
    # As the Space runs it: `python app.py` in the folder, the port from Gradio's own variable.
    with serving([str(VENV_BIN / "python"), "app.py"], {**hub_env, "GRADIO_SERVER_PORT": str(port)}, space,
                 port) as url:
        top, _ = label_of(Client(url, verbose=False).predict(handle_file(str(tmp_path / "seven.png")),
                                                             api_name="/predict"))
    assert top == str(int(test.labels[0])) == "7"


def test_demo_mistakes_are_one_line(fast_mnist_run, tmp_path):
    without_gradio = "import sys; sys.modules['gradio'] = None; from mnist_dist import cli; sys.exit(cli.main(sys.argv[1:]))"
    proc = run([str(VENV_BIN / "python"), "-c", without_gradio, "demo", str(fast_mnist_run)], check=False)
    assert proc.returncode == 2 and proc.stderr == (
        "mnist-dist demo: error: the demo needs Gradio, an optional extra: pip install 'mnist-dist[demo]'\n")
    for args, words in [(["--port", "70000"], "--port must be 1-65535, got 70000"),
                        ([], f"{tmp_path / 'nothing'}")]:
        target = str(tmp_path / "nothing") if not args else str(fast_mnist_run)
        proc = run_cli(["demo", target, *args], check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
