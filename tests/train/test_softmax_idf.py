"""`loss: softmax_idf` (SuperClass, SPEC.md §9): each 1/K target weight times log(N / df(h)) over the
plan's unique images, renormalized per image; an image whose hashtags are all on every plan image
keeps 1/K. A tiny run with it finishes and records the weights' N and idf range."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from swagcli.prep import sample as S
from swagcli.train import checkpoint as ck
from swagcli.train.data import StreamStats, collate, plan_df
from swagcli.train.dist import DistEnv
from swagcli.train.engine import build_loss, train
from swagcli.train.losses import SoftmaxIdf, idf_targets, plan_idf, softmax_ce

# two parts, six images, five hashtags: h0 on every image (idf 0), h1 and h2 on 3, h3 on 2, h4 on none
PARTS = [{"i0": [0, 1], "i1": [0], "i2": [0, 2]}, {"i3": [0, 1, 3], "i4": [0, 2, 3], "i5": [0, 1, 2]}]
DF = [6, 3, 3, 2, 0]


def handmade_plan(root: Path) -> Path:
    (root / "plan").mkdir(parents=True)
    parts = [S.write_part(str(root / "plan" / f"part-{i:05d}.npz"), list(p), [1 + i] * len(p), list(p.values()),
                          [False] * len(p)) for i, p in enumerate(PARTS)]
    (root / "plan.json").write_text(json.dumps({"format": S.PLAN_FORMAT, "vocab": "none", "hashtags": 5,
                                                "parts": parts, "summary": {"unique_images": 6}}))
    return root


def expected_target(labels: list[int]) -> list[float]:
    """The formula, in float64: (1/K) log(N / df(h)), renormalized; all 0 -> 1/K."""
    k = len(labels)
    v = [math.log(6 / DF[h]) / k for h in labels]
    s = sum(v)
    return [x / s for x in v] if s > 0 else [1 / k] * k


def test_weights_equal_the_formula(tmp_path):
    d = plan_df(handmade_plan(tmp_path), 5)
    assert d["images"] == 6 and d["df"].tolist() == DF  # unique images, not samples (mult 1 and 2)
    assert d["all_universal"] == 1  # i1: only h0
    idf = plan_idf(d["df"], d["images"])
    assert idf.tolist() == [0.0, math.log(2), math.log(2), math.log(3), 0.0]  # h4: on no image, never a target

    images = {k: v for p in PARTS for k, v in p.items()}
    batch = collate([(np.zeros((4, 4, 3), np.uint8), np.array(labels), (0, 0, j, None, StreamStats()))
                     for j, labels in enumerate(images.values())])
    idx, w = batch["target_idx"], batch["target_w"]
    got = idf_targets(idx, w, torch.tensor(idf, dtype=torch.float32))
    for row, labels in enumerate(images.values()):
        k = len(labels)
        assert got[row, :k].tolist() == pytest.approx(expected_target(labels), rel=1e-6, abs=1e-7)
        assert got[row, k:].abs().sum() == 0  # padding stays 0
    assert got[1, :1].tolist() == [1.0]  # the fallback: 1/K
    assert got[3, :3].tolist() == pytest.approx([0, math.log(2) / math.log(6), math.log(3) / math.log(6)])

    fn, info = build_loss(SimpleNamespace(loss="softmax_idf"), tmp_path, 5)
    assert info == {"images": 6, "hashtags": 4, "idf_min": 0.0, "idf_max": round(math.log(3), 6),
                    "images_kept_1_over_k": 1}
    logits = torch.randn(len(images), 5, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, 1)
    want = -sum(sum(t * logp[r, h].item() for t, h in zip(expected_target(labels), labels))
                for r, labels in enumerate(images.values())) / len(images)
    assert fn(logits, idx, w).item() == pytest.approx(want, rel=1e-5)
    assert isinstance(fn, SoftmaxIdf) and build_loss(SimpleNamespace(loss="softmax"), tmp_path, 5) == (softmax_ce, None)


def test_tiny_pretrain_with_softmax_idf_finishes(tiny_world, tmp_path):
    from tests.train.test_pretrain import tiny_recipe

    r = tiny_recipe(tiny_world, tmp_path / "run", samples=32 * 4, loss="softmax_idf", eval_samples=64)
    res = train(r, DistEnv(), progress=False)
    assert res["status"] == "finished" and res["step"] == 4 and math.isfinite(res["last_loss"])
    summary = json.loads((tiny_world["plan"] / "summary.json").read_text())
    idf = res["idf"]
    assert idf["images"] == summary["unique_images"] and 0 <= idf["idf_min"] < idf["idf_max"]
    assert ck.load_meta(Path(res["checkpoint"]))["idf"] == idf
    # evaluation: the training objective (the training plan's idf) and the plain 1/K softmax loss
    assert math.isfinite(res["eval_loss"]) and math.isfinite(res["eval_softmax_loss"])
