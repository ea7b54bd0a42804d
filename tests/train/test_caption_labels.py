"""Labels from captions on the synthetic world (SPEC.md §8): the caption vocabulary recovers the
world's concepts (precision and recall of canonical hashtags against the ground truth), and a tiny
model pretrained on caption labels learns them: held-out hashtag top-1 well above chance, and
zero-shot with Platt scaling works from its head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swagcli import recipes
from swagcli.prep import sample, vocab
from swagcli.prep.synth_captions import score_vocab
from swagcli.train.dist import DistEnv
from swagcli.train.engine import train

REPO = Path(__file__).resolve().parents[2]


def _vocab(world: Path, out: Path, labels: str, **over):
    flags = {"dumps": [str(world / "dumps")], "out": str(out), "head_min_images": 60, "labels": labels}
    return vocab.build(recipes.load("vocab", flags=flags, overrides=[f"{k}={v}" for k, v in over.items()]))


@pytest.fixture(scope="module")
def caption_world(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("caption-labels")
    world = tiny_world["world"]
    doc = _vocab(world, root / "vocab", "caption")
    sample.build(recipes.load("sample", flags={"vocab": str(root / "vocab"), "dumps": [str(world / "dumps")],
                                               "out": str(root / "plan"), "samples": 5000, "holdout": 0.1}))
    return {"root": root, "doc": doc, "world": json.loads((world / "world.json").read_text()),
            "hashtag_doc": json.loads((tiny_world["vocab"] / "vocab.json").read_text())}


def test_caption_vocabulary_recovers_the_concepts(caption_world):
    cw = caption_world
    cap = score_vocab(cw["doc"], cw["hashtag_doc"], cw["world"])
    recall = cap["recall"]
    stats = cw["doc"]["stats"]["caption"]
    print(f"\ncaption vocabulary: {cap['hashtags']} hashtags, precision {cap['precision']:.3f}, "
          f"recall {recall:.3f} of the {cap['reference']} concepts the hashtag vocabulary found; "
          f"{stats['labelled_share']:.1%} of captions labelled, {stats['mean_labels']} labels each; "
          f"dropped {stats['top_dropped'][:4]}")
    assert cap["precision"] >= 0.9 and recall >= 0.9
    assert cw["doc"]["sources"]["labels"] == "caption" and stats["labelled_share"] > 0.8
    assert {w for w, _ in stats["top_dropped"]} & {"photo", "picture", "image", "stock"}
    # the plan read its posts as the vocabulary did (labels: null = the vocabulary's)
    plan = json.loads((cw["root"] / "plan" / "plan.json").read_text())
    assert plan["sources"]["labels"] == "caption" and plan["summary"]["read"]["caption"]["captions"] > 0


def test_stop_list_keeps_the_medium_out(caption_world, tiny_world, tmp_path):
    """Without the stop list the medium words become hashtags of their own (photo, picture...)."""
    doc = _vocab(tiny_world["world"], tmp_path / "v", "caption", **{"caption.stop": "[]"})
    extra = {h["name"] for h in doc["hashtags"]} - {h["name"] for h in caption_world["doc"]["hashtags"]}
    cw = caption_world
    cap = score_vocab(doc, cw["hashtag_doc"], cw["world"])
    with_stop = score_vocab(cw["doc"], cw["hashtag_doc"], cw["world"])
    print(f"\nwithout the stop list: {len(doc['hashtags'])} hashtags (+{sorted(extra)}), "
          f"precision {cap['precision']:.3f} (with it: {with_stop['precision']:.3f})")
    assert {"photo", "picture", "image"} & extra
    assert cap["precision"] < with_stop["precision"] and cap["recall"] == with_stop["recall"]


def test_a_model_pretrained_on_caption_labels(caption_world, tiny_world, cli, tmp_path):
    root = caption_world["root"]
    shards = "[" + ",".join(tiny_world["shards"]) + "]"
    sets = [f"data.plan={root / 'plan'}", f"data.shards={shards}", "data.workers=0", "data.shuffle_buffer=200",
            "log_every=10", "batch_size=64", "checkpoint_every=1000", "samples=19200", "optim.lr=0.003"]
    r = recipes.load("pretrain", REPO / "recipes/pretrain/test_vit.yaml", flags={"out": str(tmp_path / "run")},
                     overrides=sets)
    res = train(r, DistEnv(), progress=False)
    chance = 1 / len(caption_world["doc"]["hashtags"])
    print(f"\ncaption labels: held-out top-1 {res['eval_top1']:.3f} (chance {chance:.3f})")
    assert res["status"] == "finished" and res["eval_top1"] > 8 * chance, res
    down = tiny_world["world"] / "downstream"
    assert cli("zeroshot", tmp_path / "run", down / "val", "-o", tmp_path / "zs", "--set", "data.workers=0").code == 0
    zs = json.loads((tmp_path / "zs" / "zeroshot.json").read_text())
    print(f"zero-shot from caption labels: {zs['results']}")
    assert zs["results"]["platt"]["top1"] > 3 * zs["chance_top1"], zs["results"]
