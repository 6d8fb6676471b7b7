"""Glyphs: characters rendered from fonts, a dataset whose number of classes is a parameter.

Why here: no maintained package renders a font-split character dataset with a chosen number of
classes; Pillow (FreeType) draws, fontTools (a matplotlib dependency) reads each font's character map.

- Classes are characters: digits, Latin, Greek, Cyrillic, Latin-1 letters and symbols in one seeded
  order, then CJK unified ideographs in code-point order. `num_classes` takes the first that the fonts
  can draw, so smaller sets are nested in larger ones. Look-alikes (o/O/0, l/I/1/|) stay; a character
  drawn like an earlier class (differing by less than SAME of its ink at a reference size) in most of
  the PROBES broadest designs that draw both (Latin A and Greek Alpha) is left out, since no model could tell them apart.
- Which faces exist and which characters each draws: fonts.py (fontconfig, else matplotlib's fonts: a
  smaller dataset, said in one line). CJK fonts serve CJK classes only (they draw Latin, Greek and
  Cyrillic full-width, unlike the others).
- Train and test fonts are disjoint: fonts are grouped into designs (fonts.Face.design), and about one
  design in five, chosen by a hash of its name, is a test design. A class needs at least
  MIN_TRAIN_DESIGNS training and MIN_TEST_DESIGNS test designs. Metric clones of one design under
  different names (Helvetica's: Nimbus Sans, Liberation Sans, TeX Gyre Heros) can fall on both sides.
- Every class gets TRAIN_PER_CLASS training and TEST_PER_CLASS test images, spread evenly over the
  fonts of its designs, each drawn at a random size, offset and rotation from one seeded generator:
  the same bytes for the same fonts, classes and constants, however many processes render.
Images are 32 x 32, one channel, white ink on black.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from . import fonts
from .fonts import FONT_PACKAGES, Face

NAME = "glyphs"
SIZE = 32
SIZES, REFERENCE_SIZE = (14, 22), 18  # font sizes drawn (px): accents and descenders stay inside 32 px
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 50
DEFAULT_CLASSES = 100
MIN_CLASSES = 2
MIN_TRAIN_DESIGNS, MIN_TEST_DESIGNS = 2, 1
TEST_EVERY = 5  # about one design in five is a test design
PROBES, SAME = 9, 0.05  # look-alike check: designs compared; two glyphs differing by less than 5% of their ink are one
SEED = 0
CJK = 0x4E00  # the first CJK unified ideograph
VERSION = 1  # of the generator: part of the cache key
def _ranges(*pairs) -> list[str]:
    return [chr(c) for low, high in pairs for c in range(low, high + 1)]


def candidates() -> list[str]:
    """Every character that may become a class, in class order (before coverage and look-alike checks)."""
    small = (_ranges((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)) + list("!#$%&?@*+<=>/\\|~^{}[]()§¶©®°±×÷µ€£¥¢")
             + _ranges((0x3B1, 0x3C1), (0x3C3, 0x3C9), (0x391, 0x3A1), (0x3A3, 0x3A9))  # Greek
             + _ranges((0x430, 0x44F), (0x410, 0x42F))  # Cyrillic
             + _ranges((0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0xFF)))  # Latin-1 letters
    small = list(dict.fromkeys(small))
    order = np.random.default_rng(SEED).permutation(len(small))
    return [small[k] for k in order] + _ranges((0x4E00, 0x9FFF))


@functools.lru_cache(maxsize=4)
def _survey(source: str) -> tuple[list[Face], dict]:
    """(faces, {face: characters it draws}) of the system fonts (or matplotlib's)."""
    faces = fonts.faces(source)
    drawn = fonts.drawn(faces, candidates(), VERSION)
    for face in faces:  # CJK fonts draw Latin, Greek and Cyrillic full-width: they serve CJK classes only
        if sum(ord(c) >= CJK for c in drawn[face]) >= 100:
            drawn[face] = frozenset(c for c in drawn[face] if ord(c) >= CJK)
    faces = [f for f in faces if drawn[f]]
    return faces, {f: drawn[f] for f in faces}


def _test_designs(faces: list[Face], drawn: dict) -> set:
    """About one design in five, by rank of a hash of its name, separately among designs that draw CJK
    ideographs and the others, so that each group has test designs."""
    cjk = {f.design for f in faces if any(ord(c) >= CJK for c in drawn[f])}
    test = set()
    for group in (cjk, {f.design for f in faces} - cjk):
        ranked = sorted(group, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
        test |= {d for rank, d in enumerate(ranked) if rank % TEST_EVERY == 0 and len(ranked) > MIN_TRAIN_DESIGNS}
    return test


def _render(face: Face, ch: str, size: int, angle: float, dx: float, dy: float, fonts: dict) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    key = (face.path, face.index, size)
    if key not in fonts:
        fonts[key] = ImageFont.truetype(face.path, size, index=face.index)
    canvas = 2 * SIZE
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas / 2 + dx, canvas / 2 + dy), ch, font=fonts[key], fill=255, anchor="mm")
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
    low = (canvas - SIZE) // 2
    return np.asarray(image.crop((low, low, low + SIZE, low + SIZE)), dtype=np.uint8)


def _reference(face: Face, ch: str, fonts: dict) -> np.ndarray:
    """The glyph at REFERENCE_SIZE, centred, upright, as a float vector: what look-alike checks compare."""
    return _render(face, ch, REFERENCE_SIZE, 0.0, 0.0, 0.0, fonts).reshape(-1).astype(np.float32)


@dataclass
class Plan:
    classes: list[str]
    train_faces: dict  # class -> faces of training designs that draw it
    test_faces: dict
    source: str  # "system" or "matplotlib"
    faces: list[Face]


@functools.lru_cache(maxsize=1)
def _sides() -> tuple:
    """(source, faces, drawn, test designs, [(character, {is test: faces})]) of the characters with enough
    designs on both sides (half a second over the ~10,000 candidates: kept, since every split load asks);
    one line when no font is usable."""
    source = "system"
    faces, drawn = _survey("system")
    if not _test_designs(faces, drawn):
        source = "matplotlib"
        faces, drawn = _survey("matplotlib")
    test_designs = _test_designs(faces, drawn)
    if not faces or not test_designs:
        raise UserError("no usable fonts for --data glyphs: neither fontconfig (fc-list) nor matplotlib's fonts "
                        f"give training and test fonts; install fonts, e.g. apt-get install {' '.join(FONT_PACKAGES[:3])}")
    design = {f: f.design for f in faces}
    drawers = collections.defaultdict(list)  # character -> the faces that draw it, in face order
    for face in faces:
        for ch in drawn[face]:
            drawers[ch].append(face)
    eligible = []
    for ch in candidates():
        sides: dict[bool, list] = {True: [], False: []}
        for face in drawers.get(ch, ()):
            sides[design[face] in test_designs].append(face)
        if (len({design[f] for f in sides[False]}) >= MIN_TRAIN_DESIGNS
                and len({design[f] for f in sides[True]}) >= MIN_TEST_DESIGNS):
            eligible.append((ch, sides))
    return source, faces, drawn, test_designs, eligible


def _eligible(num_classes: int) -> tuple:
    """_sides(), after one line when fewer than `num_classes` characters have enough designs on both sides."""
    source, faces, drawn, test_designs, eligible = _sides()
    if len(eligible) < num_classes:
        _too_many(len(eligible), num_classes, source)
    return source, faces, drawn, test_designs, eligible


@functools.lru_cache(maxsize=8)
def plan(num_classes: int) -> Plan:
    """Which characters and which fonts: the first `num_classes` candidates with enough designs on both
    sides that are not a bit-identical double of an earlier class."""
    source, faces, drawn, test_designs, eligible = _eligible(num_classes)
    fonts: dict = {}
    classes, train, test = [], {}, {}
    # look-alike probes: the training face of each design that draws most, broadest designs first
    broad = sorted((f for f in faces if f.design not in test_designs), key=lambda f: (-len(drawn[f]), f.path, f.index))
    broad = list({f.design: f for f in reversed(broad)}.values())[::-1]
    kept: dict = {}  # probe face -> (classes kept so far that it draws, their reference bitmaps)
    for ch, sides in eligible:
        if ord(ch) >= CJK:  # unified ideographs are distinct characters: no look-alike check (it is quadratic)
            classes.append(ch)
            train[ch], test[ch] = sides[False], sides[True]
            if len(classes) == num_classes:
                break
            continue
        probes = [f for f in broad if ch in drawn[f]][:PROBES]
        mine = {face: _reference(face, ch, fonts) for face in probes}  # rendered once, compared, then kept
        near: collections.Counter = collections.Counter()
        both: collections.Counter = collections.Counter()
        for face in probes:
            if face not in kept:
                kept[face] = ([c for c in classes if c in drawn[face]], [_reference(face, c, fonts) for c in classes
                                                                         if c in drawn[face]])
            names, bitmaps = kept[face]
            if names:
                stack = np.stack(bitmaps)
                ink = (stack.sum(1) + mine[face].sum()) / 2
                close = np.abs(stack - mine[face]).sum(1) < SAME * ink
                both.update(names)
                near.update(n for n, c in zip(names, close) if c)
        if any(2 * near[c] > both[c] >= 2 for c in near):
            continue  # drawn like an earlier class in most designs that draw both: a homoglyph
        for face, (names, bitmaps) in kept.items():
            if ch in drawn[face]:
                names.append(ch)
                bitmaps.append(mine[face] if face in mine else _reference(face, ch, fonts))
        classes.append(ch)
        train[ch], test[ch] = sides[False], sides[True]
        if len(classes) == num_classes:
            break
    if len(classes) < num_classes:
        _too_many(len(classes), num_classes, source)
    return Plan(classes, train, test, source, faces)


def _too_many(most: int, asked: int, source: str):
    more = "" if source == "system" and most > 1000 else \
        f"; the Debian font packages {', '.join(FONT_PACKAGES)} raise it"
    raise UserError(f"--data glyphs can draw at most {most} classes with the fonts here (train and test fonts), "
                    f"{asked} asked (data.num_classes){more}")


def _jobs(plan_: Plan, split: str) -> list[tuple]:
    """(class index, face, size, angle, dx, dy) for every image of the split, in order."""
    rng = np.random.default_rng([SEED, 0 if split == "train" else 1])
    per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
    faces_of = plan_.train_faces if split == "train" else plan_.test_faces
    jobs = []
    for label, ch in enumerate(plan_.classes):
        faces = faces_of[ch]
        order = rng.permutation(len(faces))
        sizes = rng.integers(SIZES[0], SIZES[1] + 1, per_class)
        angles = rng.uniform(-12, 12, per_class)
        shifts = rng.uniform(-2.5, 2.5, (per_class, 2))
        for k in range(per_class):
            face = faces[order[k % len(faces)]]
            jobs.append((label, face, int(sizes[k]), float(angles[k]), float(shifts[k, 0]), float(shifts[k, 1])))
    return jobs


def _render_chunk(args) -> np.ndarray:
    classes, chunk = args
    fonts: dict = {}
    return np.stack([_render(face, classes[label], size, angle, dx, dy, fonts)
                     for label, face, size, angle, dx, dy in chunk])


def render(plan_: Plan, split: str, processes: int | None = None) -> dict:
    """The split's images (N, 1, 32, 32) uint8, labels and class names; rendered in parallel."""
    jobs = _jobs(plan_, split)
    processes = processes or min(os.cpu_count() or 1, 8)
    size = max(1, -(-len(jobs) // (processes * 4)))
    chunks = [(plan_.classes, jobs[i:i + size]) for i in range(0, len(jobs), size)]
    if processes > 1 and len(chunks) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(processes) as pool:
            parts = pool.map(_render_chunk, chunks)
    else:
        parts = [_render_chunk(c) for c in chunks]
    images = np.concatenate(parts)[:, None]
    labels = np.array([j[0] for j in jobs], dtype=np.int64)
    names = [f"U+{ord(ch):04X} {ch}" for ch in plan_.classes]
    return {"images": images, "labels": labels, "classes": names}


def cache_key(num_classes: int | None, split: str) -> tuple[list[Path], str]:
    """The font files (their names, sizes and times key the cache) and the rest of the key, after the cheap
    part of the check that the fonts can draw `num_classes` classes (so that a sweep refuses before any run)."""
    faces = fonts.faces("system") + fonts.faces("matplotlib")
    num_classes = DEFAULT_CLASSES if num_classes is None else num_classes
    _eligible(num_classes)
    extra = f"{NAME}|v{VERSION}|{split}|{num_classes}|{TRAIN_PER_CLASS}|{TEST_PER_CLASS}|{SEED}"
    return sorted({Path(f.path) for f in faces}), extra


def read_split(split: str, num_classes: int | None) -> dict:
    plan_ = plan(DEFAULT_CLASSES if num_classes is None else num_classes)
    if plan_.source == "matplotlib":
        print(f"note: --data glyphs uses matplotlib's fonts (no usable system fonts): fewer fonts and classes; "
              f"apt-get install {' '.join(FONT_PACKAGES)} gives the full set", file=sys.stderr)
    return render(plan_, split)


def size(data_cfg) -> tuple[int, int, int, int, int]:
    """(train images, test images, channels, side, classes) of a glyphs set, without rendering it."""
    classes = DEFAULT_CLASSES if data_cfg.num_classes is None else data_cfg.num_classes
    return TRAIN_PER_CLASS * classes, TEST_PER_CLASS * classes, 1, SIZE, classes


def describe(num_classes: int | None) -> dict:
    """Classes, fonts per split and images: `fixedhead data info glyphs`, and the run's meta."""
    plan_ = plan(DEFAULT_CLASSES if num_classes is None else num_classes)
    used = {side: sorted({f for faces in table.values() for f in faces}, key=lambda f: (f.path, f.index))
            for side, table in (("train", plan_.train_faces), ("test", plan_.test_faces))}
    return {"font_source": plan_.source, "num_classes": len(plan_.classes),
            "fonts": {side: len(faces) for side, faces in used.items()},
            "designs": {side: len({f.design for f in faces}) for side, faces in used.items()},
            "images_per_class": {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS},
            "generator": {"version": VERSION, "seed": SEED}}
