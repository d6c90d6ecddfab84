"""Omniglot (Lake et al. 2015) read straight from its two official zip archives.

``images_background.zip`` (964 characters, 30 alphabets) and
``images_evaluation.zip`` (659 characters, 20 alphabets) hold
``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``: 20 drawings per
character, each a 105x105 1-bit PNG (white paper, black ink). They are read
from the zip, never unpacked, decoded with Pillow and resized to 28x28.

Resizing (``resize=``):

``"nearest"`` (default, reproduces the MAML reference)
    Finn et al.'s preprocessing calls Pillow's ``resize((28, 28), LANCZOS)``
    on the 1-bit images, but Pillow resizes mode ``"1"`` images with
    nearest-neighbour whatever filter is asked for, so the reference 28x28
    images are binary. We call ``NEAREST`` explicitly: same pixels.
``"lanczos"``
    Convert to 8-bit greyscale first, then a true Lanczos resize: grey,
    anti-aliased strokes. Not what the published numbers used.

Pixels follow ``images.py``: uint8 ink intensity, 0 = paper, 255 = ink.

Where the archives are looked for: the ``root`` argument if given, else the
``TINYMETA_OMNIGLOT`` environment variable (a folder) if set, else
``<cache>/omniglot/`` (the first place given is used; a wrong folder is an
error, never a fallback). The cache folder is ``$TINYMETA_CACHE``, else
``$XDG_CACHE_HOME/tinymeta``, else ``~/.cache/tinymeta``; decoded arrays are
cached there as ``.npz``, keyed by the archive's SHA-256 and the resize, with
a SHA-256 of the arrays stored alongside: a cache that does not match is
rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .. import validation as val
from .images import INK, SIDE, ImageClasses, ImageSplit, with_rotations

ENV_ROOT = "TINYMETA_OMNIGLOT"
ENV_CACHE = "TINYMETA_CACHE"
DOWNLOAD_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
# set -> (archive, characters, alphabets); Lake et al. 2015 and the archives' own listing
ARCHIVES = {"background": ("images_background.zip", 964, 30),
            "evaluation": ("images_evaluation.zip", 659, 20)}
DRAWINGS = 20  # every character was drawn by 20 people (Lake et al. 2015)
RAW_SIDE = 105
RESIZES = ("nearest", "lanczos")
MAML_TRAIN = 1200  # Finn et al. 2017, section 5.2, after Santoro et al. 2016 and Vinyals et al. 2016
MAML_SPLIT_SEED = 1  # the reference code seeds its shuffle with random.seed(1)
CACHE_FORMAT = 1
_MEMBER = re.compile(r"^(images_background|images_evaluation)/([^/]+)/character(\d+)/(\d{4})_(\d{2})\.png$")


def cache_dir() -> Path:
    """``$TINYMETA_CACHE``, else ``$XDG_CACHE_HOME/tinymeta``, else ``~/.cache/tinymeta``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tinymeta"


def find_archive(which: str, root=None) -> Path:
    """Path of the ``which`` (``"background"``/``"evaluation"``) archive.

    The first place *given* is the one used: ``root``, else ``$TINYMETA_OMNIGLOT``,
    else ``<cache_dir()>/omniglot``. Raises ``FileNotFoundError`` saying what to
    download and where to put it if the archive is not there.
    """
    filename = _archive_spec(which)[0]
    if root is not None:
        folder, origin = Path(root).expanduser(), "the root argument"
    elif os.environ.get(ENV_ROOT):
        folder, origin = Path(os.environ[ENV_ROOT]).expanduser(), f"${ENV_ROOT}"
    else:
        folder, origin = cache_dir() / "omniglot", "the cache folder"
    path = folder / filename
    if not path.is_file():
        names = " and ".join(spec[0] for spec in ARCHIVES.values())
        raise FileNotFoundError(
            f"Omniglot archive {filename} not found in {folder} ({origin}). Download {names} from the "
            f"python/ folder of the brendenlake/omniglot repository ({DOWNLOAD_URL}) and put them in "
            f"{cache_dir() / 'omniglot'}, or pass root= / set ${ENV_ROOT} to the folder that holds them.")
    return path


def load(which: str, root=None, resize: str = "nearest", use_cache: bool = True) -> ImageClasses:
    """The characters of one archive, ``(C, 20, 28, 28)`` uint8 ink, sorted by alphabet then number.

    ``which``: ``"background"`` (C = 964) or ``"evaluation"`` (C = 659). Class
    names are ``"<Alphabet>/characterNN"``. Decoded once, then read from the cache.
    """
    path = find_archive(which, root)
    data = cached_decode(path, resize)[0] if use_cache else decode_archive(path, resize)
    if data.n_classes != ARCHIVES[which][1]:
        raise ValueError(f"{path} holds {data.n_classes} characters, not the {ARCHIVES[which][1]} of the "
                         f"{which} set: is it the other archive under this name?")
    return data


def maml_split(root=None, resize: str = "nearest", n_validation: int = 0, seed: int = MAML_SPLIT_SEED,
               use_cache: bool = True) -> ImageSplit:
    """The split of Santoro et al. 2016 and Finn et al. 2017: 1200 characters to meta-train, 423 to test.

    All 1623 characters (both archives) are ranked by SHA-256 of
    ``f"{seed}:{name}"``; the first 1200 meta-train, the other 423 test. The
    reference code shuffles its ``os.listdir`` order with Python's
    ``random.seed(1)``, which depends on the file system; ranking by hash is
    the same kind of fixed random choice, but reproducible anywhere.
    Training characters are augmented with their rotations by 90, 180 and
    270 degrees as new classes (``train.n_classes == 4 * (1200 - n_validation)``);
    test characters are not rotated (the papers' protocol; the reference code
    rotates them at random). ``n_validation`` characters, the last of the 1200
    in hash order, are held out unrotated as ``validation`` (the reference
    code keeps 100).
    """
    n_validation = val.check_int(n_validation, "n_validation", minimum=0)
    seed = val.check_int(seed, "seed", minimum=0)
    if n_validation >= MAML_TRAIN:
        raise ValueError(f"n_validation must be < {MAML_TRAIN} (it is taken from the training characters), "
                         f"got {n_validation}")
    parts = [load(which, root, resize, use_cache) for which in ("background", "evaluation")]
    every = ImageClasses(np.concatenate([p.images for p in parts]), np.concatenate([p.names for p in parts]))
    rank = [hashlib.sha256(f"{seed}:{name}".encode()).digest() for name in every.names]
    order = sorted(range(every.n_classes), key=rank.__getitem__)
    n_fit = MAML_TRAIN - n_validation
    train = every.subset(sorted(order[:n_fit]))
    validation = every.subset(sorted(order[n_fit:MAML_TRAIN])) if n_validation else None
    test = every.subset(sorted(order[MAML_TRAIN:]))
    return ImageSplit(with_rotations(train), test, validation,
                      f"omniglot maml-split seed={seed} resize={resize} n_validation={n_validation}")


def background_evaluation_split(root=None, resize: str = "nearest", rotations: bool = False,
                                use_cache: bool = True) -> ImageSplit:
    """Lake et al.'s own split: meta-train on the 964 background characters, test on the 659 evaluation ones.

    ``rotations=True`` adds the 90/180/270-degree rotations of the training characters as classes.
    """
    train, test = (load(which, root, resize, use_cache) for which in ("background", "evaluation"))
    return ImageSplit(with_rotations(train) if rotations else train, test, None,
                      f"omniglot background/evaluation resize={resize} rotations={rotations}")


# ----------------------------------------------------------------------------- decoding


def decode_archive(path, resize: str = "nearest") -> ImageClasses:
    """Read, check and decode one archive (no cache). ``ValueError`` if it is corrupt or incomplete."""
    path = Path(path)
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot archive {path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise _corrupt(path, err) from None
    with archive:
        characters = _listing(archive, path)
        images = np.empty((len(characters), DRAWINGS, SIDE, SIDE), dtype=np.uint8)
        for c, (_, members) in enumerate(characters):
            for d, info in enumerate(members):
                try:
                    images[c, d] = decode_png(archive.read(info), resize)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError, ValueError) as err:
                    raise _corrupt(path, err, info.filename) from None
    return ImageClasses(images, np.array([name for name, _ in characters]))


def _corrupt(path: Path, err: Exception, member: str = "") -> ValueError:
    where = f" at {member}" if member else ""
    return ValueError(f"Omniglot archive {path} is corrupted or truncated{where} "
                      f"({type(err).__name__}: {err}); download it again from {DOWNLOAD_URL}")


def _archive_spec(which: str) -> tuple:
    if which not in ARCHIVES:
        raise ValueError(f"which must be one of {tuple(ARCHIVES)}, got {which!r}")
    return ARCHIVES[which]


def _listing(archive: zipfile.ZipFile, path: Path) -> list:
    """``[(name, [ZipInfo of drawing 1..20])]`` sorted by alphabet and number, after checking the counts."""
    chars: dict = {}
    tops = set()
    for info in archive.infolist():
        match = _MEMBER.match(info.filename)
        if match:
            tops.add(match[1])
            alphabet, number, drawing = match[2], int(match[3]), int(match[5])
            chars.setdefault((alphabet, number), {}).setdefault(drawing, []).append(info)
    if len(tops) != 1:
        raise ValueError(f"Omniglot archive {path} must hold images_background/... or images_evaluation/... "
                         f"PNG members (one set), found {sorted(tops) or 'none'}; download it again from "
                         f"{DOWNLOAD_URL}")
    which = tops.pop().removeprefix("images_")
    problems = [f"{a}/character{n:02d} has drawings {sorted(d)} (duplicates: "
                f"{sorted(k for k, v in d.items() if len(v) > 1)})"
                for (a, n), d in sorted(chars.items())
                if sorted(d) != list(range(1, DRAWINGS + 1)) or any(len(v) > 1 for v in d.values())]
    n_alphabets = len({a for a, _ in chars})
    _, want_chars, want_alphabets = ARCHIVES[which]
    if (len(chars), n_alphabets) != (want_chars, want_alphabets):
        problems.insert(0, f"expected {want_chars} characters in {want_alphabets} alphabets, "
                           f"found {len(chars)} in {n_alphabets}")
    if problems:
        raise ValueError(f"Omniglot archive {path} is incomplete or not an Omniglot archive: "
                         + "; ".join(problems[:3]) + f"; download it again from {DOWNLOAD_URL}")
    return [(f"{a}/character{n:02d}", [d[k][0] for k in sorted(d)]) for (a, n), d in sorted(chars.items())]


def decode_png(png: bytes, resize: str) -> np.ndarray:
    """One Omniglot PNG (105x105, 1-bit) -> (28, 28) uint8 ink (0 paper, 255 ink), resized as ``resize``."""
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    image = Image.open(io.BytesIO(png), formats=["PNG"])
    if image.mode != "1" or image.size != (RAW_SIDE, RAW_SIDE):
        raise ValueError(f"expected a {RAW_SIDE}x{RAW_SIDE} 1-bit PNG, "
                         f"got mode {image.mode} size {image.size}")
    if resize == "nearest":  # what Pillow does to mode "1" for any filter: the reference's images
        paper = np.asarray(image.resize((SIDE, SIDE), Image.Resampling.NEAREST), dtype=bool)
        return np.where(paper, 0, INK).astype(np.uint8)
    grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    return INK - np.asarray(grey, dtype=np.uint8)


# ----------------------------------------------------------------------------- cache


def cached_decode(path, resize: str = "nearest", directory=None) -> tuple:
    """``(ImageClasses, status)``: the decoded archive, from the cache when it is valid.

    ``status`` is ``"hit"`` (a valid cache was read), ``"miss"`` (no cache: decoded
    and written) or ``"rebuilt"`` (a cache file existed but was corrupt or did not
    match: decoded and overwritten). ``directory`` defaults to ``cache_dir()/"omniglot"``.
    """
    path = Path(path)
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    digest = _file_sha256(path)
    folder = Path(directory) if directory is not None else cache_dir() / "omniglot"
    file = folder / f"{path.stem}-{resize}-{digest[:16]}.npz"
    cached = _read_cache(file, digest, resize)
    if cached is not None:
        return cached, "hit"
    status = "rebuilt" if file.exists() else "miss"
    data = decode_archive(path, resize)
    _write_cache(file, data, digest, resize)
    return data, status


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _data_sha256(images: np.ndarray, names: np.ndarray) -> str:
    h = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update("\n".join(names.tolist()).encode())
    return h.hexdigest()


def _read_cache(file: Path, archive_sha256: str, resize: str):
    """The cached arrays if the file is intact and made from this archive and resize, else None."""
    try:
        with np.load(file, allow_pickle=False) as z:
            meta = {k: z[k].item() for k in ("format", "archive_sha256", "resize", "data_sha256")}
            images, names = z["images"], z["names"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # unreadable: rebuild
    if (meta["format"], meta["archive_sha256"], meta["resize"]) != (CACHE_FORMAT, archive_sha256, resize):
        return None
    if images.dtype != np.uint8 or names.dtype.kind != "U":
        return None
    if images.ndim != 4 or images.shape[1:] != (DRAWINGS, SIDE, SIDE) or names.shape != images.shape[:1]:
        return None
    return ImageClasses(images, names) if _data_sha256(images, names) == meta["data_sha256"] else None


def _write_cache(file: Path, data: ImageClasses, archive_sha256: str, resize: str) -> None:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``file``."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=data.images, names=data.names, format=np.int64(CACHE_FORMAT),
                     archive_sha256=np.str_(archive_sha256), resize=np.str_(resize),
                     data_sha256=np.str_(_data_sha256(data.images, data.names)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
