import os

import numpy as np
import pytest
from conftest import FERPLUS_DIR, write_png

from ean_tf import data as data_lib
from ean_tf.config import make_config
from ean_tf.data import affectnet, ferplus, generic, rafdb
from ean_tf.data.base import DataError, check_images

# ------------------------------------------------------------------ FERPlus ---


@pytest.mark.parametrize(
    "votes,mode,expected",
    [
        # Votes of 1 go first: 4/9 is not a majority -> dropped (unknown).
        ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], "majority", None),
        ([6, 0, 1, 1, 0, 0, 0, 0, 2, 0], "majority", [1, 0, 0, 0, 0, 0, 0, 0]),
        ([0, 0, 0, 0, 0, 0, 0, 6, 2, 2], "majority", [0, 0, 0, 0, 0, 0, 0, 1]),
        ([0, 0, 0, 0, 0, 0, 0, 0, 9, 1], "majority", None),
        # Probability: take peaks until 75% of the votes: 4 + 3 of 9.
        (
            [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],
            "probability",
            [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0],
        ),
        (
            [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],
            "crossentropy",
            [4 / 7, 0, 0, 0, 3 / 7, 0, 0, 0],
        ),
        # Multi-target: every emotion with at least 30% of the votes.
        (
            [5, 4, 0, 0, 0, 0, 0, 0, 1, 0],
            "multi_target",
            [5 / 9, 4 / 9, 0, 0, 0, 0, 0, 0],
        ),
        # Unknown ties the peak: it is dropped.
        ([3, 0, 0, 0, 0, 0, 0, 0, 3, 0], "probability", None),
    ],
)
def test_ferplus_vote_rules(votes, mode, expected):
    dist = ferplus.process_votes(votes, mode)
    if expected is None:
        assert int(np.argmax(dist)) >= 8
    else:
        assert int(np.argmax(dist)) < 8
        np.testing.assert_allclose(dist[:8] / dist[:8].sum(), expected, atol=1e-9)


def _ferplus_fixture(root, rows, split="FER2013Train"):
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i, votes in enumerate(rows):
        name = f"fer{i:07d}.png"
        write_png(os.path.join(folder, name), 48, seed=i, grey=True)
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
    with open(os.path.join(folder, "label.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def test_ferplus_reader_drops_and_labels(tmp_path):
    _ferplus_fixture(
        tmp_path,
        [
            [6, 0, 1, 1, 0, 0, 0, 0, 2, 0],  # neutral
            [4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # no majority: dropped
            [0, 9, 0, 0, 0, 0, 0, 0, 0, 1],  # happiness
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face: dropped
            [0, 0, 0, 0, 0, 0, 0, 8, 0, 2],  # contempt
        ],
    )
    split = ferplus.read_split(str(tmp_path), "FER2013Train")
    assert [os.path.basename(p) for p in split.paths] == [
        "fer0000000.png",
        "fer0000002.png",
        "fer0000004.png",
    ]
    assert split.labels.tolist() == [0, 1, 7]
    seven = ferplus.read_split(str(tmp_path), "FER2013Train", num_classes=7)
    assert seven.labels.tolist() == [0, 1] and seven.num_classes == 7
    soft = ferplus.read_split(str(tmp_path), "FER2013Train", "probability")
    assert len(soft) == 4 and soft.targets.shape == (4, 8)


def test_ferplus_bad_line_names_file_and_line(tmp_path):
    folder = _ferplus_fixture(tmp_path, [[6, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    with open(os.path.join(folder, "label.csv"), "a") as f:
        f.write('fer0000009.png,"(0, 0, 48, 48)",1,x,0,0,0,0,0,0,0,0\n')
    with pytest.raises(DataError, match=r"label.csv:2: votes are not numbers"):
        ferplus.read_split(str(tmp_path), "FER2013Train")


def test_ferplus_wrong_field_count(tmp_path):
    folder = _ferplus_fixture(tmp_path, [[6, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    with open(os.path.join(folder, "label.csv"), "a") as f:
        f.write("fer0000009.png,1,2,3\n")
    with pytest.raises(DataError, match=r"label.csv:2: expected 12 fields"):
        ferplus.read_split(str(tmp_path), "FER2013Train")


@pytest.mark.skipif(not os.path.isdir(FERPLUS_DIR), reason="shared FERPlus absent")
def test_ferplus_real_counts():
    train = ferplus.read_split(FERPLUS_DIR, "FER2013Train")
    valid = ferplus.read_split(FERPLUS_DIR, "FER2013Valid")
    assert (len(train), len(valid)) == (25045, 3191)


# ------------------------------------------------------------------- RAF-DB ---


def _rafdb_fixture(root, rows):
    os.makedirs(os.path.join(root, "EmoLabel"), exist_ok=True)
    for name, _ in rows:
        stem = os.path.splitext(name)[0]
        write_png(os.path.join(root, "Image", "aligned", f"{stem}_aligned.jpg"), 32)
    with open(os.path.join(root, "EmoLabel", "list_patition_label.txt"), "w") as f:
        f.write("".join(f"{n} {label}\n" for n, label in rows))


def test_rafdb_reader(tmp_path):
    _rafdb_fixture(
        tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 7), ("test_0001.jpg", 1)]
    )
    train = rafdb.read_split(str(tmp_path), "train")
    assert train.labels.tolist() == [3, 6]
    assert train.class_names[3] == "happiness"
    assert train.paths[0].endswith(os.path.join("aligned", "train_00001_aligned.jpg"))
    assert rafdb.read_split(str(tmp_path), "test").labels.tolist() == [0]


def test_rafdb_unknown_class_id(tmp_path):
    _rafdb_fixture(tmp_path, [("train_00001.jpg", 4), ("train_00002.jpg", 9)])
    with pytest.raises(
        DataError, match=r"list_patition_label.txt:2: unknown class id 9"
    ):
        rafdb.read_split(str(tmp_path), "train")


# ---------------------------------------------------------------- AffectNet ---


def _affectnet_fixture(root, rows, name="training.csv"):
    header = (
        "subDirectory_filePath,face_x,face_y,face_width,face_height,"
        "facial_landmarks,expression,valence,arousal"
    )
    lines = [header]
    for i, code in enumerate(rows):
        rel = f"{i}/img{i}.jpg"
        write_png(os.path.join(root, affectnet.IMAGE_DIR, rel), 40, seed=i)
        lines.append(f'{rel},4,4,30,30,"1;2;3",{code},0.1,-0.2')
    with open(os.path.join(root, name), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_affectnet_reader_drops_non_expressions(tmp_path):
    _affectnet_fixture(tmp_path, [0, 1, 7, 8, 9, 10, 6])
    eight = affectnet.read_split(str(tmp_path), "train", 8)
    assert eight.labels.tolist() == [0, 1, 7, 6]
    assert eight.boxes.tolist()[0] == [4, 4, 30, 30]
    seven = affectnet.read_split(str(tmp_path), "train", 7)
    assert seven.labels.tolist() == [0, 1, 6]


def test_affectnet_unknown_code(tmp_path):
    _affectnet_fixture(tmp_path, [0, 12])
    with pytest.raises(DataError, match=r"training.csv:3: unknown expression code 12"):
        affectnet.read_split(str(tmp_path), "train")


# --------------------------------------------------------------- folder/csv ---


def test_folder_reader(tmp_path):
    for split, cls, i in [
        ("train", "happy", 0),
        ("train", "sad", 1),
        ("train", "sad", 2),
        ("val", "sad", 3),
    ]:
        write_png(str(tmp_path / split / cls / f"{i}.png"))
    classes = generic.folder_classes(str(tmp_path), "train")
    assert classes == ("happy", "sad")
    assert generic.read_folder(str(tmp_path), "train", classes).labels.tolist() == [
        0,
        1,
        1,
    ]
    assert generic.read_folder(str(tmp_path), "val", classes).labels.tolist() == [1]


def test_folder_unknown_class_in_val(tmp_path):
    write_png(str(tmp_path / "train" / "happy" / "0.png"))
    write_png(str(tmp_path / "val" / "angry" / "0.png"))
    with pytest.raises(DataError, match="angry"):
        generic.read_folder(str(tmp_path), "val", ("happy",))


def test_folder_empty_split(tmp_path):
    (tmp_path / "train" / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no image"):
        generic.read_folder(str(tmp_path), "train", ("happy",))


def test_csv_reader_with_names_and_splits(tmp_path):
    for i in range(3):
        write_png(str(tmp_path / f"im{i}.png"))
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nim0.png,sad,train\nim1.png,happy,train\nim2.png,sad,val\n"
    )
    rows = generic.read_csv_rows(str(tmp_path / "labels.csv"))
    classes = generic.csv_classes(rows)
    assert classes == ("happy", "sad")
    train = generic.read_csv(str(tmp_path), "train", classes)
    assert train.labels.tolist() == [1, 0]
    assert train.paths[0] == str(tmp_path / "im0.png")


def test_csv_bad_header(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(DataError, match=r"labels.csv:1: header must name"):
        generic.read_csv_rows(str(tmp_path / "labels.csv"))


def test_csv_without_split_column_holds_out_validation(tmp_path):
    for i in range(20):
        write_png(str(tmp_path / f"im{i}.png"), seed=i)
    (tmp_path / "labels.csv").write_text(
        "path,label\n" + "".join(f"im{i}.png,{i % 2}\n" for i in range(20))
    )
    config = make_config("tiny", dataset="csv", data_dir=str(tmp_path))
    splits = data_lib.load(config.data)
    assert len(splits.train) == 18 and len(splits.val) == 2
    assert not set(splits.train.paths) & set(splits.val.paths)


# ------------------------------------------------------------ the built-in ---


def test_default_data_is_deterministic_and_cached(tmp_path):
    config = make_config("tiny", data_dir=str(tmp_path))
    a = data_lib.load(config.data)
    b = data_lib.load(config.data)
    assert a.train.paths == b.train.paths
    assert len(a.train) == 96 and len(a.val) == 32
    assert a.train.identities is not None and a.class_names[0] == "neutral"
    # Every class is present in training.
    assert all(c > 0 for c in a.train.class_counts().values())
    other = make_config("tiny", data_dir=str(tmp_path / "other"))
    c = data_lib.load(other.data)
    with open(a.train.paths[5], "rb") as fa, open(c.train.paths[5], "rb") as fc:
        assert fa.read() == fc.read()


# ----------------------------------------------------------------- bad input ---


def _bad_files(tmp_path):
    good = write_png(str(tmp_path / "good.png"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(open(good, "rb").read()[:40] + b"\x00" * 30)
    return good, str(empty), str(text), str(corrupt), str(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "index,problem",
    [(1, "empty file"), (2, "not a JPEG"), (3, "corrupt image"), (4, "file not found")],
)
def test_bad_image_is_a_clear_error(tmp_path, index, problem):
    files = _bad_files(tmp_path)
    examples = data_lib.Examples(
        [files[0], files[index]], np.array([0, 1]), ("a", "b"), source="labels.csv"
    )
    with pytest.raises(DataError, match=problem) as info:
        check_images(examples, skip_bad=False)
    assert files[index] in str(info.value) and "--skip_bad_images" in str(info.value)


def test_skip_bad_images_reports_every_one(tmp_path):
    files = _bad_files(tmp_path)
    examples = data_lib.Examples(
        list(files), np.arange(5) % 2, ("a", "b"), source="labels.csv"
    )
    kept, report = check_images(examples, skip_bad=True)
    assert kept.paths == [files[0]]
    assert sorted(r["path"] for r in report) == sorted(files[1:])


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match="empty"):
        check_images(data_lib.Examples([], np.array([]), ("a",), source="x.csv"), False)


def test_missing_data_dir_is_an_error(tmp_path):
    config = make_config("tiny", dataset="ferplus", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="--data_dir"):
        data_lib.load(config.data)


def _crc_damaged_png(path, good):
    """`good`'s PNG with one byte of its IDAT chunk's CRC changed: OpenCV only
    warns, TensorFlow's decoder (the one training uses) refuses it."""
    data = bytearray(open(good, "rb").read())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 + length] ^= 0xFF  # first CRC byte
    with open(path, "wb") as f:
        f.write(bytes(data))
    return str(path)


def test_png_with_a_damaged_crc_is_caught_by_validation(tmp_path):
    good = write_png(str(tmp_path / "good.png"))
    bad = _crc_damaged_png(tmp_path / "crc.png", good)
    examples = data_lib.Examples(
        [good, bad], np.array([0, 1]), ("a", "b"), source="labels.csv"
    )
    with pytest.raises(DataError, match="corrupt image") as info:
        check_images(examples, skip_bad=False)
    assert bad in str(info.value)
    # TensorFlow's reason, without its internal function and op names.
    assert "CRC" in str(info.value) or "PNG" in str(info.value)
    assert "{{" not in str(info.value) and "[Op:" not in str(info.value)


def _png_claiming(path, good, width, height):
    """`good`'s PNG whose header claims width x height: a pixel bomb's header."""
    data = bytearray(open(good, "rb").read())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return str(path)


def test_an_image_of_too_many_pixels_is_named_as_serving_names_it(tmp_path):
    """Its size is read from the header and refused before decoding, with the
    limit (--max_image_pixels) in the message, as serving says it."""
    good = write_png(str(tmp_path / "good.png"))  # 24 x 24
    bomb = _png_claiming(tmp_path / "bomb.png", good, 12_000, 12_000)
    examples = data_lib.Examples(
        [good, bomb], np.array([0, 1]), ("a", "b"), source="labels.csv"
    )
    with pytest.raises(DataError) as info:
        check_images(examples, skip_bad=False)
    message = str(info.value)
    assert message.startswith(f"{bomb}: more pixels than the limit, 16777216 ")
    assert "(--max_image_pixels): 144000000" in message
    assert "{{" not in message and "DecodeImage" not in message
    with pytest.raises(DataError, match="more pixels than the limit, 500 "):
        check_images(examples.select([0]), skip_bad=False, max_pixels=500)


def test_a_validation_class_the_training_split_lacks_is_an_error(tmp_path):
    for i in range(3):
        write_png(str(tmp_path / f"im{i}.png"))
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nim0.png,sad,train\nim1.png,happy,train\nim2.png,angry,val\n"
    )
    config = make_config("tiny", dataset="csv", data_dir=str(tmp_path))
    with pytest.raises(DataError) as info:
        data_lib.load(config.data)
    message = str(info.value)
    assert "labels.csv:4: im2.png of split 'val' has class 'angry'" in message
    assert "the training split has no image of (its classes: happy, sad)" in message
    # Integer labels: an id above the training split's.
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nim0.png,0,train\nim1.png,1,train\nim2.png,2,val\n"
    )
    with pytest.raises(DataError, match="im2.png of split 'val' has class '2'"):
        data_lib.load(config.data)


def test_a_folder_class_without_training_images_is_not_a_class(tmp_path):
    write_png(str(tmp_path / "train" / "happy" / "0.png"))
    (tmp_path / "train" / "angry").mkdir()  # no image
    write_png(str(tmp_path / "val" / "angry" / "0.png"))
    write_png(str(tmp_path / "val" / "happy" / "0.png"))
    config = make_config("tiny", dataset="folder", data_dir=str(tmp_path))
    with pytest.raises(DataError) as info:
        data_lib.load(config.data)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "val" / "angry" / "0.png"))
    assert "split 'val' has class 'angry'" in message


def _csv_with_one_bad_image(tmp_path, bad_kind="crc"):
    rows = ["path,label,split"]
    for i in range(24):
        split = "train" if i < 16 else "val"
        path = write_png(str(tmp_path / "faces" / f"{i}.png"), size=32, seed=i)
        rows.append(f"{path},{'ab'[i % 2]},{split}")
    bad = _crc_damaged_png(tmp_path / "faces" / "crc.png", path)
    rows.append(f"{bad},a,train")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "labels.csv"), bad


def test_skip_bad_images_implies_validation(tmp_path):
    csv_path, bad = _csv_with_one_bad_image(tmp_path)
    config = make_config(  # the tiny preset turns validation off
        "tiny", dataset="csv", data_dir=csv_path, skip_bad_images=True
    )
    assert config.data.validate_images is False
    splits = data_lib.load(config.data)
    assert bad not in splits.train.paths and len(splits.train) == 16
    assert [r["path"] for r in splits.bad_images] == [bad]


def test_decode_error_in_training_names_the_file(tmp_path):
    from ean_tf.train import train

    csv_path, bad = _csv_with_one_bad_image(tmp_path)
    config = make_config(
        "tiny",
        dataset="csv",
        data_dir=csv_path,
        run_dir=str(tmp_path / "run"),
        epochs=1,
        adj_warmup_epochs=0,
    )
    with pytest.raises(DataError, match="crc.png: corrupt image") as info:
        train(config, verbose=0)
    assert "No checkpoint had been written yet" in str(info.value)


def test_ferplus_missing_split_names_what_is_needed(tmp_path):
    config = make_config("tiny", dataset="ferplus", data_dir=str(tmp_path))
    with pytest.raises(DataError) as info:
        data_lib.load(config.data)
    message = str(info.value)
    assert "FER2013Train" in message and "FER2013Test is optional" in message
