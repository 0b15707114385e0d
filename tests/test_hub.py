"""fetch_builtin against a local mirror laid out like the hub: the real `datasets` loading path, offline."""

import json

import pytest

from forgetlab.data.hub import HUB_SPECS, fetch_builtin
from forgetlab.errors import UserError

datasets = pytest.importorskip("datasets")

BANKING_NAMES = ["activate_my_card", "age_limit", "card_arrival"]
DBPEDIA_NAMES = ["Company", "EducationalInstitution", "Artist"]


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """An empty mirror folder named by FORGETLAB_HUB_MIRROR; the datasets cache kept inside tmp_path."""
    root = tmp_path / "mirror"
    root.mkdir()
    monkeypatch.setenv("FORGETLAB_HUB_MIRROR", str(root))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return root


def put(root, repo, split, columns, features):
    """Write one split of `repo` as data/<split>-00000-of-00001.parquet, like the hub does."""
    folder = root / repo / "data"
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def banking_mirror(root, text_column="text"):
    feats = {text_column: datasets.Value("string"), "label": datasets.ClassLabel(names=BANKING_NAMES)}
    put(root, "PolyAI/banking77", "train",
        {text_column: ["How do I activate my card?", "I'm 15, can I get a card?", "When will my card arrive?"],
         "label": [0, 1, 2]}, feats)
    put(root, "PolyAI/banking77", "test", {text_column: ["My card has not come yet"], "label": [2]}, feats)


def test_banking77_labels_are_class_names(mirror, tmp_path):
    banking_mirror(mirror)
    dest = tmp_path / "out" / "banking77"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from an older fetch")

    assert fetch_builtin("banking77", dest) == dest

    assert read_jsonl(dest / "train.jsonl") == [
        {"text": "How do I activate my card?", "label": "activate_my_card"},
        {"text": "I'm 15, can I get a card?", "label": "age_limit"},
        {"text": "When will my card arrive?", "label": "card_arrival"},
    ]
    assert read_jsonl(dest / "test.jsonl") == [{"text": "My card has not come yet", "label": "card_arrival"}]
    assert json.loads((dest / "labels.json").read_text()) == ["activate_my_card", "age_limit", "card_arrival"]
    assert sorted(p.name for p in dest.iterdir()) == ["labels.json", "test.jsonl", "train.jsonl"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["banking77"]  # no temp folders left


def test_dbpedia_title_and_content(mirror, tmp_path):
    feats = {"label": datasets.ClassLabel(names=DBPEDIA_NAMES), "title": datasets.Value("string"),
             "content": datasets.Value("string")}
    put(mirror, "fancyzhx/dbpedia_14", "train",
        {"label": [2, 0], "title": ["Ada Lovelace", "Acme Corp"],
         "content": [" English mathematician.", "Makes anvils {and} rockets."]}, feats)
    put(mirror, "fancyzhx/dbpedia_14", "test",
        {"label": [1], "title": ["Tiny College"], "content": ["A small school."]}, feats)

    dest = fetch_builtin("dbpedia", tmp_path / "dbpedia")

    assert read_jsonl(dest / "train.jsonl") == [
        {"text": "Title: Ada Lovelace\nText:  English mathematician.", "label": "Artist"},
        {"text": "Title: Acme Corp\nText: Makes anvils {and} rockets.", "label": "Company"},
    ]
    assert read_jsonl(dest / "test.jsonl") == [
        {"text": "Title: Tiny College\nText: A small school.", "label": "Educational Institution"}
    ]
    assert json.loads((dest / "labels.json").read_text()) == ["Artist", "Company", "Educational Institution"]


def test_missing_column_raises_and_writes_nothing(mirror, tmp_path):
    banking_mirror(mirror, text_column="sentence")
    dest = tmp_path / "out" / "banking77"
    with pytest.raises(UserError, match=r"banking77: .*no column text"):
        fetch_builtin("banking77", dest)
    assert not dest.exists()


def test_load_failure_and_missing_mirror_folder_raise_user_error(mirror, tmp_path):
    with pytest.raises(UserError, match="agnews: .*mirror has no folder"):
        fetch_builtin("agnews", tmp_path / "agnews")
    (mirror / "fancyzhx" / "ag_news").mkdir(parents=True)  # there, but holds no data files
    with pytest.raises(UserError, match="agnews: could not load"):
        fetch_builtin("agnews", tmp_path / "agnews")
    assert not (tmp_path / "agnews").exists()


def test_unknown_name(tmp_path):
    with pytest.raises(UserError, match="unknown built-in data set 'mnist'"):
        fetch_builtin("mnist", tmp_path / "mnist")


def test_fewrel_pools_splits_and_holds_out_a_fifth_of_each_relation(mirror, tmp_path):
    feats = {"relation": datasets.Value("string"), "tokens": datasets.Sequence(datasets.Value("string"))}
    relations = {"train_wiki": ["P931", "P4552"], "val_wiki": ["P177"]}
    for split, rels in relations.items():
        tokens = [["In", rel, "case", str(i), "."] for rel in rels for i in range(10)]
        put(mirror, "thunlp/few_rel", split, {"relation": [t[1] for t in tokens], "tokens": tokens}, feats)

    dest = fetch_builtin("fewrel", tmp_path / "fewrel")

    train, test = read_jsonl(dest / "train.jsonl"), read_jsonl(dest / "test.jsonl")
    assert not (dest / "validation.jsonl").exists()
    assert json.loads((dest / "labels.json").read_text()) == ["P177", "P4552", "P931"]
    for rel in ["P931", "P4552", "P177"]:
        tr = {r["text"] for r in train if r["label"] == rel}
        te = {r["text"] for r in test if r["label"] == rel}
        assert (len(tr), len(te)) == (8, 2)
        assert not tr & te
        assert tr | te == {f"In {rel} case {i} ." for i in range(10)}
    # the same seed gives the same split
    again = fetch_builtin("fewrel", tmp_path / "fewrel2")
    assert read_jsonl(again / "test.jsonl") == test


def test_specs_cover_the_builtin_sets():
    assert set(HUB_SPECS) == {"clinc150", "banking77", "fewrel", "agnews", "yelp", "amazon", "dbpedia", "yahoo",
                              "20newsgroups"}
    assert HUB_SPECS["yelp"].label_names == HUB_SPECS["amazon"].label_names  # one label space for both


def test_builtin_name_without_a_local_copy_goes_through_the_hub_once(mirror, tmp_path, monkeypatch):
    from forgetlab.data.sources import load_dataset

    banking_mirror(mirror)
    monkeypatch.setenv("FORGETLAB_DATA_DIR", str(tmp_path / "no-local-copies"))
    monkeypatch.setenv("FORGETLAB_CACHE_DIR", str(tmp_path / "cache"))
    ds = load_dataset("banking77")
    assert [e.label for e in ds.train] == ["activate_my_card", "age_limit", "card_arrival"]
    assert (tmp_path / "cache" / "datasets" / "banking77" / "train.jsonl").is_file()
    monkeypatch.delenv("FORGETLAB_HUB_MIRROR")         # the converted copy is reused: no hub needed
    assert [e.text for e in load_dataset("banking77").test] == ["My card has not come yet"]
