"""Recipes: every shipped recipe validates; unknown keys, bad values and bad files are one-line
errors naming the file and field; precedence defaults < file < flags < --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from swagcli import recipes
from swagcli.errors import SwagError

REPO = Path(__file__).resolve().parent.parent
ALL_RECIPES = sorted((REPO / "recipes").glob("**/*.yaml"))


def test_repo_has_recipes_for_built_commands():
    kinds = {p.parent.name for p in ALL_RECIPES}
    assert {"vocab", "synth"} <= kinds


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_in_repo_validates(path):
    kind = recipes.kind_of(path)
    r = recipes.load(kind, path)
    # the header documents the exact command to run it
    command = {"ablation": "findings"}.get(kind, kind)  # a study runs under `swag findings`
    assert f"swag {command}" in path.read_text().split("kind:")[0]
    # the resolved dump is itself a valid recipe of the same kind
    again = recipes.validate(kind, __import__("yaml").safe_load(recipes.dump(r)))
    assert again == r


def test_defaults_are_the_specs():
    v = recipes.load("vocab")
    assert (v.min_count, v.head_min_images, v.min_len) == (2, 5000, 3)
    assert set(v.allowed_senses) == {"noun.animal", "noun.artifact", "noun.food", "noun.object",
                                     "noun.plant", "noun.event"}


def test_precedence_file_flags_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("min_count: 5\nhead_min_images: 100\nworkers: 3\n")
    r = recipes.load("vocab", f, flags={"head_min_images": 200, "workers": None},
                     overrides=["workers=4", "countries=[US, GB]"])
    assert (r.min_count, r.head_min_images, r.workers, r.countries) == (5, 200, 4, ["US", "GB"])


@pytest.mark.parametrize("text, needle", [
    ("min_cont: 3\n", "min_cont: unknown key"),
    ("min_count: lots\n", "min_count:"),
    ("min_count: 0\n", "min_count:"),
    ("allowed_senses: [noun.animals]\n", "allowed_senses"),
    ("format: csv\n", "format:"),
    ("- just\n- a list\n", "YAML mapping"),
    ("min_count: [1\n", "invalid YAML"),
    ("kind: synth\n", "kind:"),
])
def test_bad_recipes_name_file_and_field(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SwagError) as e:
        recipes.load("vocab", f)
    assert str(f) in str(e.value) and needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override():
    with pytest.raises(SwagError, match="key=value"):
        recipes.load("vocab", overrides=["min_count"])
    with pytest.raises(SwagError, match="head_min_images"):
        recipes.load("vocab", overrides=["head_min_images=-1"])


def test_cli_recipe_validate_and_show(swag, tmp_path):
    ok = swag("recipe", "validate", *ALL_RECIPES)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "vocab" / "typo.yaml"
    bad.parent.mkdir()
    bad.write_text("head_min_image: 10\n")
    res = swag("recipe", "validate", REPO / "recipes/vocab/demo.yaml", bad)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "head_min_image" in lines[0]
    assert "Traceback" not in res.stderr
    shown = swag("recipe", "show", REPO / "recipes/vocab/demo.yaml", "--set", "min_count=7", check=True)
    assert "min_count: 7" in shown.stdout and "kind: vocab" in shown.stdout
    missing = swag("recipe", "show", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "recipe file not found" in missing.stderr
