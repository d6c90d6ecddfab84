"""Omniglot from the official archives: counts, resizing, the cache, corrupt archives, where archives
are looked for, and the two splits. Tests marked ``real`` need the archives (found in
$TINYMETA_OMNIGLOT or a ``shared/data/omniglot`` folder above the repository) and skip without them."""
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tinymeta.tasks import ImageClasses, omniglot

BACKGROUND, EVALUATION = (spec[0] for spec in omniglot.ARCHIVES.values())


def _real_folder():
    candidates = [os.environ.get(omniglot.ENV_ROOT)]
    candidates += [str(p / "shared/data/omniglot") for p in Path(__file__).parents]
    for folder in filter(None, candidates):
        if all((Path(folder) / name).is_file() for name in (BACKGROUND, EVALUATION)):
            return Path(folder)
    return None


REAL = _real_folder()
real = pytest.mark.skipif(REAL is None, reason="Omniglot archives not found: set TINYMETA_OMNIGLOT to the "
                          "folder holding images_background.zip and images_evaluation.zip")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's cache, or sees the user's TINYMETA_OMNIGLOT."""
    monkeypatch.setenv(omniglot.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(omniglot.ENV_ROOT, raising=False)


@pytest.fixture(scope="session")
def decoded(tmp_path_factory):
    """Both real archives decoded once (nearest) into a session cache.

    ``{which: (data, status, seconds), "folder": cache folder}``."""
    if REAL is None:
        pytest.skip("Omniglot archives not found")
    folder = tmp_path_factory.mktemp("omniglot-cache")
    out = {}
    for which, spec in omniglot.ARCHIVES.items():
        start = time.perf_counter()
        data, status = omniglot.cached_decode(REAL / spec[0], "nearest", folder)
        out[which] = data, status, time.perf_counter() - start
    out["folder"] = folder
    return out


def _png(mode="1", size=105, seed=0) -> bytes:
    image = Image.new(mode, (size, size), 1 if mode == "1" else 255)
    rng = np.random.default_rng(seed)
    ImageDraw.Draw(image).line([tuple(rng.integers(10, 95, 2).tolist()) for _ in range(4)], fill=0, width=3)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _fake_archive(path, n_characters=3, drawings=20, top="images_background", png=_png):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for c in range(1, n_characters + 1):
            for d in range(1, drawings + 1):
                name = f"{top}/Alphabet_of_Tests/character{c:02d}/{c:04d}_{d:02d}.png"
                z.writestr(name, png(seed=100 * c + d))
    return path


# ----------------------------------------------------------------------------- real archives


@real
@pytest.mark.slow
def test_archives_hold_964_and_659_characters_of_20_drawings(decoded):
    background, evaluation = decoded["background"][0], decoded["evaluation"][0]
    assert background.images.shape == (964, 20, 28, 28) and evaluation.images.shape == (659, 20, 28, 28)
    names = np.concatenate([background.names, evaluation.names])
    assert len(set(names)) == 1623 and names[0] == "Alphabet_of_the_Magi/character01"
    assert len({n.split("/")[0] for n in background.names}) == 30
    assert len({n.split("/")[0] for n in evaluation.names}) == 20
    for data in (background, evaluation):  # nearest: binary, about 7.8 % ink as in the 105x105 originals
        assert set(np.unique(data.images)) == {0, 255}
        assert 0.06 < (data.images == 255).mean() < 0.10
        assert (data.images.reshape(len(data.images) * 20, -1).max(axis=1) == 255).all()  # no blank drawing


@real
@pytest.mark.slow
def test_second_read_is_a_cache_hit_with_identical_arrays(decoded):
    first, status, _ = decoded["background"]
    start = time.perf_counter()
    again, status2 = omniglot.cached_decode(REAL / BACKGROUND, "nearest", decoded["folder"])
    warm = time.perf_counter() - start
    assert (status, status2) == ("miss", "hit")
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.names, first.names)
    assert warm < decoded["background"][2]  # reading the cache beats decoding


@real
def test_real_pngs_are_1_bit_and_pillow_resizes_them_with_nearest_neighbour():
    """The MAML reference asked for LANCZOS on mode "1" images; Pillow gives nearest-neighbour."""
    with zipfile.ZipFile(REAL / EVALUATION) as z:
        pngs = [z.read(n) for n in z.namelist() if n.endswith(".png")][:40]
    for png in pngs:
        image = Image.open(io.BytesIO(png))
        assert image.mode == "1" and image.size == (105, 105)
        asked = np.asarray(image.resize((28, 28), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(asked, np.asarray(image.resize((28, 28), Image.Resampling.NEAREST)))
        nearest, lanczos = omniglot.decode_png(png, "nearest"), omniglot.decode_png(png, "lanczos")
        np.testing.assert_array_equal(nearest, np.where(asked, 0, 255))
        assert len(np.unique(lanczos)) > 2  # a true Lanczos resize has grey levels
        assert abs(int(lanczos.astype(int).sum()) - int(nearest.astype(int).sum())) < 0.5 * nearest.sum()


@real
@pytest.mark.slow
def test_maml_split_is_1200_rotated_by_four_and_423_unrotated(decoded, monkeypatch):
    monkeypatch.setattr(omniglot, "cached_decode", lambda path, resize: (
        decoded["background" if Path(path).name == BACKGROUND else "evaluation"][0], "hit"))
    split = omniglot.maml_split(REAL)
    assert split.train.images.shape == (4800, 20, 28, 28) and split.test.images.shape == (423, 20, 28, 28)
    assert split.validation is None
    base = split.train.images[::4]
    for k in range(1, 4):
        np.testing.assert_array_equal(split.train.images[k::4], np.rot90(base, k, axes=(2, 3)))
    train_chars = {n.rsplit("/", 1)[0] for n in split.train.names}
    assert len(train_chars) == 1200 and not train_chars & set(split.test.names)
    with_val = omniglot.maml_split(REAL, n_validation=100)  # the same 1200, 100 of them held out
    assert with_val.train.n_classes == 4400 and with_val.validation.n_classes == 100
    assert {n.rsplit("/", 1)[0] for n in with_val.train.names} | set(with_val.validation.names) == train_chars
    np.testing.assert_array_equal(omniglot.maml_split(REAL).test.names, split.test.names)  # deterministic
    other = omniglot.maml_split(REAL, seed=2)
    assert set(other.test.names) != set(split.test.names) and other.test.n_classes == 423
    original = omniglot.background_evaluation_split(REAL)
    assert (original.train.n_classes, original.test.n_classes) == (964, 659)


@real
def test_truncated_real_archive_gives_a_clear_error(tmp_path):
    raw = (REAL / EVALUATION).read_bytes()
    (tmp_path / EVALUATION).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated.*download it again"):
        omniglot.load("evaluation", root=tmp_path)


@real
def test_bit_flip_in_real_archive_gives_a_clear_error(tmp_path):
    raw = bytearray((REAL / EVALUATION).read_bytes())
    with zipfile.ZipFile(REAL / EVALUATION) as z:
        info = [i for i in z.infolist() if i.filename.endswith(".png")][5]  # an early member: fails fast
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0x10
    (tmp_path / EVALUATION).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"corrupted or truncated at {info.filename}"):
        omniglot.load("evaluation", root=tmp_path)


# ----------------------------------------------------------------------------- small fake archives


def test_incomplete_archive_is_refused_with_the_counts(tmp_path):
    _fake_archive(tmp_path / BACKGROUND, n_characters=3)
    with pytest.raises(ValueError, match="expected 964 characters in 30 alphabets, found 3 in 1"):
        omniglot.decode_archive(tmp_path / BACKGROUND)


def test_missing_drawing_is_named(tmp_path):
    _fake_archive(tmp_path / EVALUATION, n_characters=2, drawings=19, top="images_evaluation")
    with pytest.raises(ValueError, match=r"character01 has drawings \[1, 2, .*19\]"):
        omniglot.decode_archive(tmp_path / EVALUATION)


@pytest.mark.parametrize("damage", ["truncate", "flip", "not a zip"])
def test_damaged_fake_archive_gives_a_clear_error(tmp_path, damage, monkeypatch):
    path = _fake_archive(tmp_path / BACKGROUND)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 200]
    elif damage == "flip":
        with zipfile.ZipFile(path) as z:
            info = z.infolist()[7]
        raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0x01
    else:
        raw = b"<html>404 Not Found</html>"
    path.write_bytes(bytes(raw))
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (BACKGROUND, 3, 1))  # the fake's counts are right
    with pytest.raises(ValueError, match="corrupted or truncated"):
        omniglot.decode_archive(path)


def test_fake_archive_with_right_counts_decodes(tmp_path, monkeypatch):
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (BACKGROUND, 3, 1))
    data = omniglot.decode_archive(_fake_archive(tmp_path / BACKGROUND))
    assert data.images.shape == (3, 20, 28, 28) and data.images.dtype == np.uint8
    assert list(data.names) == [f"Alphabet_of_Tests/character0{c}" for c in (1, 2, 3)]
    np.testing.assert_array_equal(data.images[1, 4], omniglot.decode_png(_png(seed=205), "nearest"))


def test_png_that_is_not_1_bit_105x105_is_refused():
    with pytest.raises(ValueError, match="1-bit PNG"):
        omniglot.decode_png(_png(mode="L"), "nearest")
    with pytest.raises(ValueError, match="1-bit PNG"):
        omniglot.decode_png(_png(size=64), "nearest")
    with pytest.raises(ValueError, match="resize must be one of"):
        omniglot.decode_png(_png(), "bicubic")


# ----------------------------------------------------------------------------- where archives are found


def test_archive_precedence_is_argument_then_environment_then_cache(tmp_path, monkeypatch):
    folders = {name: tmp_path / name for name in ("arg", "env", "cache")}
    for folder in folders.values():
        folder.mkdir()
        (folder / BACKGROUND).write_bytes(b"")
    monkeypatch.setenv(omniglot.ENV_CACHE, str(tmp_path))
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / BACKGROUND).write_bytes(b"")
    monkeypatch.setenv(omniglot.ENV_ROOT, str(folders["env"]))
    assert omniglot.find_archive("background", folders["arg"]) == folders["arg"] / BACKGROUND
    assert omniglot.find_archive("background") == folders["env"] / BACKGROUND
    monkeypatch.delenv(omniglot.ENV_ROOT)
    assert omniglot.find_archive("background") == tmp_path / "omniglot" / BACKGROUND


def test_a_given_place_without_the_archive_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / BACKGROUND).write_bytes(b"")  # present in the cache ...
    monkeypatch.setenv(omniglot.ENV_CACHE, str(tmp_path))
    monkeypatch.setenv(omniglot.ENV_ROOT, str(tmp_path / "elsewhere"))  # ... but the user pointed elsewhere
    message = r"images_background.zip not found in .*elsewhere \(\$TINYMETA"
    with pytest.raises(FileNotFoundError, match=message):
        omniglot.find_archive("background")


def test_missing_archives_say_what_to_download_and_where():
    with pytest.raises(FileNotFoundError) as err:
        omniglot.load("evaluation")
    message = str(err.value)
    for part in ("images_background.zip", "images_evaluation.zip", "brendenlake/omniglot", "python/",
                 str(omniglot.cache_dir() / "omniglot"), "TINYMETA_OMNIGLOT"):
        assert part in message
    with pytest.raises(ValueError, match="which must be one of"):
        omniglot.find_archive("training")


def test_cache_folder_is_env_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert omniglot.cache_dir() == tmp_path / "cache"  # set by the autouse fixture
    monkeypatch.delenv(omniglot.ENV_CACHE)
    assert omniglot.cache_dir() == tmp_path / "xdg" / "tinymeta"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert omniglot.cache_dir() == tmp_path / "home" / ".cache" / "tinymeta"


# ----------------------------------------------------------------------------- the cache, on fake data


@pytest.fixture
def counted_decode(monkeypatch, rng):
    """decode_archive replaced by a stub that counts its calls and returns fixed small data."""
    images = rng.integers(0, 256, (3, 20, 28, 28), dtype=np.uint8)
    data = ImageClasses(images, np.array(["a/c1", "a/c2", "b/c1"]))
    calls = []
    monkeypatch.setattr(omniglot, "decode_archive", lambda path, resize: calls.append(resize) or data)
    return data, calls


def test_cache_miss_then_hit(tmp_path, counted_decode):
    data, calls = counted_decode
    archive = tmp_path / BACKGROUND
    archive.write_bytes(b"archive bytes")
    first, s1 = omniglot.cached_decode(archive, "nearest", tmp_path / "c")
    second, s2 = omniglot.cached_decode(archive, "nearest", tmp_path / "c")
    assert (s1, s2, calls) == ("miss", "hit", ["nearest"])
    np.testing.assert_array_equal(second.images, data.images)
    np.testing.assert_array_equal(second.names, data.names)
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".npz"]  # no temporary file left behind
    _, s3 = omniglot.cached_decode(archive, "lanczos", tmp_path / "c")  # another resize: another key
    archive.write_bytes(b"other archive bytes")
    _, s4 = omniglot.cached_decode(archive, "nearest", tmp_path / "c")  # another archive: another key
    assert (s3, s4, len(calls)) == ("miss", "miss", 3)


@pytest.mark.parametrize("damage", ["flip a pixel byte", "truncate", "stale checksum", "other archive",
                                    "garbage"])
def test_corrupt_or_mismatched_cache_is_rebuilt_never_used(tmp_path, counted_decode, damage):
    data, calls = counted_decode
    archive = tmp_path / BACKGROUND
    archive.write_bytes(b"archive bytes")
    omniglot.cached_decode(archive, "nearest", tmp_path)
    (file,) = tmp_path.glob("*.npz")
    raw = bytearray(file.read_bytes())
    if damage == "flip a pixel byte":  # images are stored uncompressed: the middle of the file is pixels
        raw[len(raw) // 3] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = b"\x00" * 100
    else:
        with np.load(file) as z:
            fields = dict(z)
        if damage == "stale checksum":
            fields["images"] = fields["images"] ^ np.uint8(1)
        else:
            fields["archive_sha256"] = np.str_("0" * 64)
        buf = io.BytesIO()
        np.savez(buf, **fields)
        raw = buf.getvalue()
    file.write_bytes(bytes(raw))
    again, status = omniglot.cached_decode(archive, "nearest", tmp_path)
    assert status == "rebuilt" and len(calls) == 2
    np.testing.assert_array_equal(again.images, data.images)
    assert omniglot.cached_decode(archive, "nearest", tmp_path)[1] == "hit"  # the rebuilt file is good


def test_cache_files_load_without_pickle(tmp_path, counted_decode):
    archive = tmp_path / BACKGROUND
    archive.write_bytes(b"x")
    omniglot.cached_decode(archive, "nearest", tmp_path)
    (file,) = tmp_path.glob("*.npz")
    with np.load(file, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
