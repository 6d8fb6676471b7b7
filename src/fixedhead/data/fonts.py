"""Fonts: which font faces this machine has and which characters each one draws.

Why here: no maintained package lists a machine's font faces with the characters each draws; fontconfig
(`fc-list`) lists the files, fontTools (a matplotlib dependency) reads each character map, Pillow
(FreeType) checks for ink. Used by the glyphs dataset (glyphs.py), whose classes are characters.
- Faces come from fontconfig; without it, from the fonts matplotlib ships (DejaVu, STIX). The Debian
  packages that give the full set are FONT_PACKAGES (`.ci/run` installs them).
- Math and symbol fonts are left out (NOT_TEXT: math alphabets, dingbats at letters' code points).
- A (face, character) pair counts only when the face's character map has the character, the glyph is
  not `.notdef` (tofu) and it has ink (a non-empty bounding box).
- A design is the family name without style words (Bold, Mono, Narrow, ...); all faces of one .ttc file
  are one design.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import read_json, write_json
from . import cache

FONT_PACKAGES = ("fonts-dejavu-core", "fonts-urw-base35", "fonts-texgyre", "fonts-freefont-ttf", "fonts-liberation2",
                 "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-linuxlibertine", "fonts-noto-core",
                 "fonts-wqy-zenhei", "fonts-arphic-uming", "fonts-arphic-ukai", "fonts-ipafont-gothic",
                 "fonts-ipafont-mincho")
STYLE_WORDS = {"bold", "italic", "oblique", "regular", "light", "extralight", "medium", "semibold", "black", "book",
               "condensed", "cn", "narrow", "mono", "sharp", "display", "ui", "text", "math", "slanted", "o"}
# fonts whose letters are not letters: math alphabets, and symbol fonts that put dingbats at the code
# points of Latin letters (D050000L is URW's Zapf Dingbats)
NOT_TEXT = re.compile(r"math|symbol|dingbat|d050000l|wingding|webding|emoji|ornament", re.IGNORECASE)
FALLBACK_PATTERN = re.compile(r"^(DejaVu|STIXGeneral)")  # matplotlib's fonts with a true Unicode map


@dataclass(frozen=True)
class Face:
    path: str
    index: int
    family: str

    @property
    def design(self) -> str:
        if self.path.lower().endswith((".ttc", ".otc")):
            return Path(self.path).stem.lower()
        words = [w for w in re.split(r"[\s_-]+", self.family.lower()) if w and w not in STYLE_WORDS]
        return " ".join(words) or self.family.lower()


def system_faces() -> list[Face]:
    if shutil.which("fc-list") is None:
        return []
    try:
        out = subprocess.run(["fc-list", "--format", "%{file}\t%{index}\t%{family[0]}\n"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].lower().endswith((".ttf", ".otf", ".ttc", ".otc")) and parts[1].isdigit() \
                and Path(parts[0]).is_file():  # a FIFO named like a font would block its reader
            found.append(Face(parts[0], int(parts[1]), parts[2]))
    return found


def matplotlib_faces() -> list[Face]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [Face(str(p), 0, p.stem) for p in sorted(folder.glob("*.ttf")) if FALLBACK_PATTERN.match(p.stem)]


def check_face(face: Face, chars: list[str]) -> frozenset:
    """The characters of `chars` this face draws: in its map, not .notdef, with ink."""
    from fontTools.ttLib import TTFont
    from PIL import ImageFont

    try:
        cmap = TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap() or {}
        font = ImageFont.truetype(face.path, 24, index=face.index)
    except Exception:  # an unreadable font file is not a font
        return frozenset()
    usable = []
    for ch in chars:
        name = cmap.get(ord(ch))
        if name is None or name == ".notdef":
            continue
        left, top, right, bottom = font.getbbox(ch)
        if right > left and bottom > top:
            usable.append(ch)
    return frozenset(usable)


def faces(source: str) -> list[Face]:
    listed = system_faces() if source == "system" else matplotlib_faces()
    return sorted({f for f in listed if not NOT_TEXT.search(f.family)}, key=lambda f: (f.path, f.index))


def drawn(surveyed: list[Face], chars: list[str], version: int) -> dict:
    """{face: the characters of `chars` it draws}, from the cache when these font files were surveyed
    before for this `version` of the caller's characters (reading every font's character map takes a
    quarter of a minute)."""

    key = cache.source_key([Path(f.path) for f in surveyed], str(version))
    path = cache.default_cache_dir() / f"glyphs-survey-{key}.json"
    try:
        saved = read_json(path, "glyph survey")
        if isinstance(saved, list) and len(saved) == len(surveyed) and all(isinstance(s, str) for s in saved):
            return {face: frozenset(s) for face, s in zip(surveyed, saved)}
    except (UserError, OSError):
        pass
    found = {face: check_face(face, chars) for face in surveyed}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, ["".join(sorted(found[f])) for f in surveyed])
    except (UserError, OSError):
        pass  # a cache that cannot be written is skipped
    return found
