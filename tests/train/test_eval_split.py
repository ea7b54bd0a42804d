"""Held-out hashtag top-1 split into head and tail hashtag images (issue 25): which hashtags are
the head, and which images count in each part."""

from __future__ import annotations

import torch

from swagcli.recipes import PretrainRecipe
from swagcli.train.dist import DistEnv
from swagcli.train.engine import evaluate, head_hashtags


def test_head_is_the_hashtags_holding_half_the_pairs():
    assert head_hashtags([10, 50, 30, 10]) == [False, True, False, False]  # 50 of 100: half, crossing
    assert head_hashtags([10, 40, 30, 20]) == [False, True, True, False]  # 40 < 50, 40 + 30 crosses
    assert head_hashtags([5, 5, 5, 5]) == [True, True, False, False]  # ties by id
    assert head_hashtags([7]) == [True]
    assert head_hashtags([0, 0, 3]) == [False, False, True]


class Fixed(torch.nn.Module):
    """A linear model whose top hashtag is the image's first pixel value (0..3)."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float() * 5


def test_images_count_by_their_hashtags():
    recipe = PretrainRecipe(out="-", data={"plan": "-"})
    # targets: [0] head; [1] head; [2] tail; [3] tail; [0, 2] both (neither part); [2, pad]
    idx = torch.tensor([[0, 0], [1, 0], [2, 0], [3, 0], [0, 2], [2, 0]])
    w = torch.tensor([[1.0, 0], [1, 0], [1, 0], [1, 0], [0.5, 0.5], [1, 0]])
    pred = torch.tensor([0, 3, 2, 1, 2, 0])  # right, wrong, right, wrong, right, wrong
    images = pred.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).float()
    batch = {"image": images, "target_idx": idx, "target_w": w}
    res = evaluate(Fixed(), lambda x: x, [batch], recipe, DistEnv(), "cpu", head=[True, True, False, False])
    assert res["eval_images"] == 6 and res["eval_top1"] == 3 / 6
    assert res["eval_head_images"] == 2 and res["eval_head_top1"] == 1 / 2
    assert res["eval_tail_images"] == 3 and res["eval_tail_top1"] == 1 / 3
    none = evaluate(Fixed(), lambda x: x, [batch], recipe, DistEnv(), "cpu")
    assert "eval_tail_top1" not in none and none["eval_top1"] == res["eval_top1"]
    # no image of a part: its count is 0 and its top-1 is absent (not 0)
    only_head = evaluate(Fixed(), lambda x: x, [batch], recipe, DistEnv(), "cpu", head=[True] * 4)
    assert only_head["eval_tail_images"] == 0 and "eval_tail_top1" not in only_head
