import json

import pytest

from tests.helpers.tiny_tokenizer import tiny_tokenizer
from vlmtrack.data.llava import DataError, bucket_of, get_metadata, missing_images, read_samples, resolve_image

EDGES, NAMES = [0, 10, 20, 9999], ["short", "medium", "long"]


def rec(i, image=None, human="<image>\nDescribe the image concisely.", caption="a red circle on gray"):
    conv = [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]
    return {"id": str(i), "image": image or f"00000/{str(i):0>9}.jpg", "conversations": conv}


def write(tmp_path, records):
    p = tmp_path / "data.json"
    p.write_text(json.dumps(records))
    return p


@pytest.mark.parametrize("n,bucket", [(0, "short"), (1, "short"), (10, "short"), (11, "medium"), (20, "medium"),
                                      (21, "long"), (500, "long"), (20000, "long")])
def test_bucket_boundaries(n, bucket):
    assert bucket_of(n, EDGES, NAMES) == bucket


def test_reads_valid_records(tmp_path):
    samples = read_samples(write(tmp_path, [rec(1), rec(2)]))
    assert [s.id for s in samples] == ["1", "2"] and samples[0].caption == "a red circle on gray"


def test_every_bad_record_reported_with_its_id(tmp_path):
    bad_conv = {"id": "no-conv", "image": "a.jpg"}
    no_gpt = rec("no-gpt"); no_gpt["conversations"] = no_gpt["conversations"][:1]
    records = [rec(1), bad_conv, no_gpt, rec("empty", caption="   "), rec("noimg", human="Describe it."),
               rec("escape", image="../../etc/passwd"), rec("abs", image="/etc/passwd"), rec(1), [1, 2]]
    with pytest.raises(DataError) as err:
        read_samples(write(tmp_path, records))
    msg = str(err.value)
    for needle in ["id=no-conv: missing conversations", "id=no-gpt: no gpt turn", "id=empty: empty caption",
                   "id=noimg: human turn must contain exactly one <image>", "id=escape: image path '../../etc/passwd' escapes",
                   "id=abs: image path '/etc/passwd' is absolute", "id=1: duplicate id", "<record 8>",
                   "8 bad record(s) of 9"]:
        assert needle in msg, needle


@pytest.mark.parametrize("content,needle", [("{\"id\": 1}", "must hold a JSON list"), ("[{\"id\": ", "not valid JSON")])
def test_bad_json_files(tmp_path, content, needle):
    p = tmp_path / "d.json"
    p.write_text(content)
    with pytest.raises(DataError, match=needle):
        read_samples(p)


def test_resolve_image_rejects_escapes(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "secret.jpg").write_text("x")
    assert resolve_image(tmp_path / "img", "00001/a.jpg") == (tmp_path / "img" / "00001" / "a.jpg").resolve()
    for bad in ["../secret.jpg", "a/../../secret.jpg", str(tmp_path / "secret.jpg")]:
        with pytest.raises(DataError):
            resolve_image(tmp_path / "img", bad)
    (tmp_path / "img" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(DataError, match="outside the image root"):
        resolve_image(tmp_path / "img", "link.jpg")


def test_metadata_label_len_is_caption_token_count(tmp_path):
    tok = tiny_tokenizer()
    caps = ["a red circle", "an image of two shapes on a gray background: a small red circle at the left and "
            "a large blue square at the right"]
    samples = read_samples(write(tmp_path, [rec(i, caption=c) for i, c in enumerate(caps)]))
    metas = get_metadata(samples, tok, EDGES, NAMES)
    assert [m.label_len for m in metas] == [len(tok(c, add_special_tokens=False)["input_ids"]) for c in caps]
    assert [m.bucket for m in metas] == ["short", "long"]
    assert metas[1].image_relpath == "00000/000000001.jpg"


def test_missing_images_lists_each_absent_file_once(tmp_path):
    for rel in ["00000/a.jpg", "00000/b.jpg", "00001/c.jpg", "top.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    rels = ["00000/a.jpg", "00000/gone.jpg", "00001/c.jpg", "00002/nofolder.jpg", "top.jpg",
            "00000/./b.jpg", "00000/gone.jpg"]
    assert missing_images(tmp_path, rels) == ["00000/gone.jpg", "00002/nofolder.jpg"]


def test_check_relpath_judges_as_purepath_did():
    """The string tests give the verdicts of the PurePosixPath version they replaced (558K path objects)."""
    from pathlib import PurePosixPath

    from vlmtrack.data.llava import check_relpath

    def reference(relpath):
        p = PurePosixPath(relpath.replace("\\", "/"))
        if p.is_absolute() or relpath[1:3] == ":/" or relpath[1:3] == ":\\":
            return "absolute"
        return "escapes" if ".." in p.parts else None

    paths = ["a/b.jpg", "/a.jpg", "//a.jpg", "\\a.jpg", "C:/a.jpg", "c:\\a.jpg", "../a.jpg", "a/../b.jpg",
             "a\\..\\b.jpg", "a/..b.jpg", "..a/b.jpg", "a/...", "./a.jpg", "a//b.jpg", "a/./../b", "..", "a/..",
             "x:y.jpg", " a.jpg", "a/b/"]
    for rel in paths:
        got = check_relpath(rel)
        verdict = None if got is None else ("absolute" if "is absolute" in got else "escapes")
        assert verdict == reference(rel), rel


def test_a_record_whose_id_is_null_or_blank_is_named_as_bad(tmp_path):
    """A null id was trained as the id "None"; it is a bad record like the others, named by its position."""
    records = [rec("ok"), dict(rec("x"), id=None), dict(rec("y"), id="  "), dict(rec("z"), id=[3]), dict(rec("w"), id=True)]
    with pytest.raises(DataError) as err:
        read_samples(write(tmp_path, records))
    msg = str(err.value)
    for needle in ["id=<record 1>: 'id' must be a non-empty string or an integer, got null",
                   "id=<record 2>: 'id' must be a non-empty string or an integer, got \"  \"",
                   "id=<record 3>: 'id' must be a non-empty string or an integer, got [3]",
                   "id=<record 4>: 'id' must be a non-empty string or an integer, got true", "4 bad record(s) of 5"]:
        assert needle in msg, needle
