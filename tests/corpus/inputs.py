"""Realistic sample inputs for each corpus model, made the way its own package prepares them.

Each maker returns ``{input name: array}`` in the samples format of CONTRACTS.md §1 (rows along
each input's first symbolic axis; a fully fixed input stacked on a new leading axis; a 0-d input
passed as is). The preprocessing follows the package's code in the pinned wheel (file and
function named in each maker); where we deviate (a smaller image size, to keep the files and
the test small), the maker says so. Everything is deterministic: same bytes on every machine,
except magika's, which reads a few files of this repository and of the standard library.
"""

from __future__ import annotations

import io
import json
import math
import random
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[2]

# Text for the rendered images: plain English from this repository's own README-like prose,
# fixed here so that the images do not change when the README does.
TEXT = (  # noqa: SIM905 (prose reads better than a list of words)
    "onnxship compresses the model checks that it still answers like the original stores it "
    "as a content addressed artifact rolls it out beside the version in service and shifts "
    "traffic to it step by step while it watches error rate latency and output agreement "
    "Invoice 2024-0173 Total due 1,284.50 EUR Paid by card on 12 March Order 88412 shipped "
    "Warehouse B aisle 7 shelf 3 Contact support at help@example.org or call 555 0199"
).split()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font (Aileron, with FreeType): the same glyphs on every machine.
    return ImageFont.load_default(size=size)


def _phrase(rng: random.Random, words: int) -> str:
    start = rng.randrange(len(TEXT) - words)
    return " ".join(TEXT[start : start + words])


# --- rapidocr: ch_ppocr_det/utils.py DetPreProcess, ch_ppocr_rec/text_recognize.py


def _page(rng: random.Random, width: int, height: int) -> Image.Image:
    """A scanned-looking page: lines of text at a few sizes, slight grey background."""
    img = Image.new("RGB", (width, height), (rng.randint(225, 250),) * 3)
    draw = ImageDraw.Draw(img)
    y = rng.randint(6, 20)
    while y < height - 24:
        size = rng.choice([14, 16, 18, 22])
        draw.text((rng.randint(6, 30), y), _phrase(rng, rng.randint(3, 7)), fill=(20, 20, 30),
                  font=_font(size))
        y += size + rng.randint(6, 16)
    return img.filter(ImageFilter.GaussianBlur(0.4))


def ocr_det(model: Path, rows: int = 8) -> dict[str, np.ndarray]:
    """Pages through rapidocr's DetPreProcess: resize to multiples of 32, (x/255 - 0.5) / 0.5,
    HWC -> CHW. rapidocr's config uses limit_type "min" with 736 (every page scaled up to at
    least 736 px); here limit_type "max" with 320, a setting the same class supports, so that a
    row is 1 MB rather than 9 MB. cv2.resize (bilinear) is replaced by Pillow's bilinear."""
    rng = random.Random(17)
    out = []
    for _ in range(rows):
        img = _page(rng, 320, 240)
        w, h = img.size
        ratio = min(1.0, 320 / max(h, w))
        rh = int(round(int(h * ratio) / 32) * 32)
        rw = int(round(int(w * ratio) / 32) * 32)
        arr = np.asarray(img.resize((rw, rh), Image.BILINEAR), dtype=np.float32)
        arr = (arr * (1 / 255.0) - 0.5) / 0.5
        out.append(arr.transpose(2, 0, 1))
    return {"x": np.stack(out).astype(np.float32)}


def ocr_rec(model: Path, rows: int = 16) -> dict[str, np.ndarray]:
    """Text-line crops through TextRecognizer.resize_norm_img: rec_img_shape [3, 48, 320],
    width 48 * max_wh_ratio (at least 320/48), resized to height 48 keeping the ratio,
    (x/255 - 0.5) / 0.5, zero-padded on the right."""
    rng = random.Random(18)
    c, h, w = 3, 48, 320
    out = []
    for _ in range(rows):
        size = rng.choice([20, 24, 28, 32])
        text = _phrase(rng, rng.randint(1, 4))
        font = _font(size)
        left, top, right, bottom = font.getbbox(text)
        paper = (rng.randint(200, 255),) * 3
        crop = Image.new("RGB", (right - left + 12, bottom - top + 10), paper)
        ImageDraw.Draw(crop).text((6 - left, 5 - top), text, fill=(10, 10, 10), font=font)
        ratio = crop.width / crop.height
        resized_w = min(w, math.ceil(h * ratio))
        arr = np.asarray(crop.resize((resized_w, h), Image.BILINEAR), dtype=np.float32)
        arr = arr.transpose(2, 0, 1) / 255
        arr = (arr - 0.5) / 0.5
        padded = np.zeros((c, h, w), np.float32)
        padded[:, :, :resized_w] = arr
        out.append(padded)
    return {"x": np.stack(out)}


# --- silero-vad: utils_vad.py OnnxWrapper.__call__


def _speech_like(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced syllables (a glottal pulse train through two formant resonators, 3-6 per second)
    between pauses of room noise: the kind of signal a VAD has to separate."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 110 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(f0 / sr)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    voiced = np.zeros(n)
    for f, bw in ((700, 130), (1200, 200)):  # formants: a resonator each
        r = math.exp(-math.pi * bw / sr)
        a1, a2 = 2 * r * math.cos(2 * math.pi * f / sr), -r * r
        y = np.zeros(n)
        for i in range(2, n):
            y[i] = pulses[i] + a1 * y[i - 1] + a2 * y[i - 2]
        voiced += y
    envelope = np.zeros(n)
    pos = int(0.3 * sr)
    while pos < n:
        length = int(rng.uniform(0.12, 0.3) * sr)
        envelope[pos : pos + length] = np.hanning(len(envelope[pos : pos + length]))
        pos += length + int(rng.uniform(0.02, 0.4) * sr)
    signal = voiced / (np.abs(voiced).max() + 1e-9) * envelope * 0.6
    return (signal + rng.normal(0, 0.005, n)).astype(np.float32)


def silero_vad(model: Path, rows: int = 48) -> dict[str, np.ndarray]:
    """A 16 kHz stream cut into 512-sample chunks, each with the 64 samples of context before
    it (576 in all), fed to the model one after the other with the state it returned: row i
    holds chunk i and the state the package would pass with it. ``sr`` is the scalar 16000."""
    import onnxruntime as ort

    sr, chunk, context = 16000, 512, 64
    audio = _speech_like((rows * chunk + context) / sr + 0.01, sr, np.random.default_rng(19))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    inputs, states = [], []
    for i in range(rows):
        x = audio[i * chunk : i * chunk + context + chunk][None, :]
        inputs.append(x[0])
        states.append(state[:, 0])
        _, state = session.run(None, {"input": x, "state": state, "sr": np.array(sr, np.int64)})
    return {
        "input": np.stack(inputs),
        "state": np.stack(states, axis=1).astype(np.float32),  # [2, N, 128]: batch axis 1
        "sr": np.array(sr, np.int64),
    }


# --- magika: magika.py Magika._extract_features_from_seekable, config.min.json


def _files() -> list[tuple[str, bytes]]:
    """Real files of many types: this repository's sources and configs, standard library
    modules, the Python binary, and archives and images written here."""
    picked: list[tuple[str, bytes]] = []
    for rel in (
        "README.md", "Makefile", "pyproject.toml", "operator/Dockerfile",
        "crds/modeldeployments.onnxship.io.yaml", "charts/onnxship/values.schema.json",
        "operator/onnxship/serve/proto/oip.proto", "operator/onnxship/serve/model.py",
        "bench/results/REPORT.md", "charts/onnxship/templates/_helpers.tpl",
        "charts/onnxship/files/grafana-dashboard.json", "examples/demo/v1.yaml",
    ):
        path = ROOT / rel
        if path.is_file():
            picked.append((rel, path.read_bytes()))
    stdlib = Path(json.__file__).parents[1]
    for rel in ("json/decoder.py", "csv.py", "wave.py", "html/parser.py"):
        if (stdlib / rel).is_file():
            picked.append((rel, (stdlib / rel).read_bytes()))
    picked.append(("python", Path(sys.executable).resolve().read_bytes()[:65536]))
    png = io.BytesIO()
    img = _page(random.Random(20), 160, 90)
    img.save(png, "PNG")
    picked.append(("page.png", png.getvalue()))
    jpg = io.BytesIO()
    img.save(jpg, "JPEG", quality=85)
    picked.append(("page.jpg", jpg.getvalue()))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes.txt", " ".join(TEXT) * 20)
    picked.append(("notes.zip", zipped.getvalue()))
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w:gz") as tf:
        data = (" ".join(TEXT) * 10).encode()
        info = tarfile.TarInfo("notes.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    picked.append(("notes.tar.gz", tarred.getvalue()))
    rows = [",".join(TEXT[i : i + 4]) for i in range(0, 60, 4)]
    picked.append(("table.csv", ("a,b,c,d\n" + "\n".join(rows)).encode()))
    picked.append(("data.json", json.dumps({"words": TEXT, "n": len(TEXT)}, indent=2).encode()))
    return picked


def magika(model: Path, rows: int = 24) -> dict[str, np.ndarray]:
    """beg: the first block (4096 bytes) lstripped, its first 1024 bytes, padded at the end
    with token 256; end: the last block rstripped, its last 1024 bytes, padded at the start;
    the model's input is beg + end as int32 (config.min.json of standard_v3_3)."""
    beg_size, end_size, pad, block = 1024, 1024, 256, 4096
    out = []
    for _, content in _files()[:rows]:
        n = min(block, len(content))
        beg = list(content[:n].lstrip()[:beg_size])
        beg += [pad] * (beg_size - len(beg))
        tail = content[len(content) - n :].rstrip()
        end = list(tail[max(0, len(tail) - end_size) :])
        end = [pad] * (end_size - len(end)) + end
        out.append(beg + end)
    return {"bytes": np.asarray(out, dtype=np.int32)}


# --- ddddocr: core/ocr_engine.py OCREngine._preprocess_image (default model)


def _captcha(rng: random.Random, text: str) -> Image.Image:
    img = Image.new("RGB", (150, 50), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):  # interference lines
        draw.line([(rng.randint(0, 150), rng.randint(0, 50)) for _ in range(2)],
                  fill=tuple(rng.randint(80, 180) for _ in range(3)), width=1)
    x = 8
    for ch in text:
        glyph = Image.new("RGBA", (34, 44), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((4, 2), ch, font=_font(30),
                                   fill=(*(rng.randint(0, 90) for _ in range(3)), 255))
        glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC)
        img.paste(glyph, (x, rng.randint(0, 8)), glyph)
        x += rng.randint(20, 28)
    for _ in range(120):  # speckle
        draw.point((rng.randrange(150), rng.randrange(50)), fill=(rng.randint(0, 255),) * 3)
    return img


def ddddocr(model: Path, rows: int = 24) -> dict[str, np.ndarray]:
    """150x50 captchas of 4-5 letters and digits: resized to height 64 keeping the ratio
    (width int(150 * 64 / 50) = 192, LANCZOS), grayscale, /255, [1, 1, 64, 192]. The model's
    batch is fixed at 1, so the N captchas are stacked on a new leading axis: [N, 1, 1, 64, 192]."""
    rng = random.Random(21)
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    out = []
    for _ in range(rows):
        img = _captcha(rng, "".join(rng.choice(alphabet) for _ in range(rng.choice([4, 5]))))
        width = int(img.size[0] * (64 / img.size[1]))
        gray = img.resize((width, 64), Image.LANCZOS).convert("L")
        out.append(np.asarray(gray, dtype=np.float32)[None, None] / 255.0)
    return {"input1": np.stack(out)}


# --- MiniLM: the shared inputs.npz (1024 Debian Handbook sentences, its own tokenizer)


def minilm(model: Path, rows: int = 32) -> dict[str, np.ndarray]:
    """The first rows of the shared tokenized sentences, cut to the longest of them (what a
    tokenizer with padding="longest" gives)."""
    with np.load(model.parent / "inputs.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k][:rows] for k in ("input_ids", "attention_mask", "token_type_ids")}
    length = int(arrays["attention_mask"].sum(axis=1).max())
    return {k: np.ascontiguousarray(v[:, :length]) for k, v in arrays.items()}


MAKERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "ocr-det": ocr_det,
    "ocr-rec": ocr_rec,
    "silero-vad": silero_vad,
    "magika": magika,
    "ddddocr": ddddocr,
    "minilm": minilm,
}
