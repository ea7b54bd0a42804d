"""Fault sweep: what a user types. Recipes and flags that used to pass silently or end in a
traceback are one line (exit 2) naming the file or field; user text is never read as console
markup; a flag's value reaches the recipe as typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import one_line_error

REPO = Path(__file__).resolve().parents[2]


def test_out_of_range_number_is_one_line(cli, tmp_path):
    res = cli("sample", "d.jsonl", "--vocab", tmp_path, "--out", tmp_path / "o", "--samples", "9" * 23)
    one_line_error(res, "samples", "out of range")
    assert not (tmp_path / "o").exists()


def test_infinite_float_is_one_line(cli, tmp_path):
    one_line_error(cli("sample", "d.jsonl", "--vocab", tmp_path, "-o", tmp_path / "o", "-m", "5",
                       "--set", "alpha=.inf"), "alpha", "finite")


def test_empty_recipe_is_refused(cli, tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    one_line_error(cli("synth", "--recipe", tmp_path / "empty.yaml", "--out", tmp_path / "w"),
                   "empty.yaml", "empty")
    assert not (tmp_path / "w").exists()  # the default world was not written


def test_duplicate_yaml_key_is_refused(cli, tmp_path):
    (tmp_path / "r.yaml").write_text("posts: 100\nconcepts: 20\nposts: 200\n")
    one_line_error(cli("synth", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "w"),
                   "r.yaml", "'posts' given twice", "lines 1 and 3")
    (tmp_path / "n.yaml").write_text("data:\n  workers: 1\n  workers: 2\n")
    one_line_error(cli("recipe", "validate", tmp_path / "n.yaml"), "'workers' given twice")


def test_unknown_flag_is_one_line(cli):
    one_line_error(cli("vocab", "build", "--bogus"), "No such option: --bogus", "swag vocab build --help")
    one_line_error(cli("nosuch"), "No such command", "swag --help")
    one_line_error(cli("vocab", "build", "--min-count", "x"), "--min-count")


@pytest.mark.parametrize("name", ["bob's run", "a: b", "x=[1,2]", 'say "hi"', "{a,b}"])
def test_flag_values_reach_the_recipe_as_typed(cli, tmp_path, name):
    """Paths with quotes, colons, '=' and brackets are paths, not YAML (they used to keep literal
    quotes or turn into dicts and lists)."""
    d = tmp_path / name
    d.mkdir()
    err = one_line_error(cli("probe", "--checkpoint", d, "--train", d, "--val", d, "--out", tmp_path / "o"))
    assert f"{d}: no class folders" in err  # the path as given, read as a folder
    err = one_line_error(cli("pretrain", "--out", tmp_path / "run", "--plan", d))
    assert f"{d}: no sample plan here" in err


def test_user_text_is_not_console_markup(cli, tmp_path):
    res = cli("vocab", "canon", "[/]", "#[bold]eggplant[/bold]", "[red]x")
    assert res.code == 0, res
    assert "#[/]" in res.out and "[red]x" in res.out and "[bold]eggplant[/bold]" in res.out
    # a path with brackets in a report line keeps them
    dump = tmp_path / "d.tsv"
    dump.write_text("".join(f"p{i}\t#eggplant #aubergine\n" for i in range(3)))
    out = tmp_path / "v[bold]"
    res = cli("vocab", "build", dump, "--out", out, "--head-min-images", "2")
    assert res.code == 0, res
    assert f"{out}/vocab.json" in res.out.replace("\n", "")


OUT_COMMANDS = {
    "vocab": ["vocab", "build", "{dump}", "--out", "{out}"],
    "sample": ["sample", "{dump}", "--vocab", "{vocab}", "--out", "{out}", "-m", "10"],
    "synth": ["synth", "--out", "{out}", "--posts", "20", "--concepts", "10"],
    "pretrain": ["pretrain", "--out", "{out}", "--plan", "{plan}", "--shards", "{shards}"],
    "probe": ["probe", "--model", "test_vit", "--train", "{down}/train", "--val", "{down}/val", "--out", "{out}"],
    "finetune": ["finetune", "--model", "test_vit", "--train", "{down}/train", "--val", "{down}/val",
                 "--out", "{out}"],
    "zeroshot": ["zeroshot", "{ckpt}", "{down}/val", "--out", "{out}"],
    "fairness": ["fairness", "{ckpt}", "{manifest}", "-a", "group", "--out", "{out}"],
    "findings": ["findings", "--recipe", str(REPO / "recipes/ablations/findings-ci.yaml"), "--out", "{out}"],
}


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_out_pointing_at_a_file_is_one_line(cli, tmp_path, tiny_world, tiny_pretrained, command):
    target = tmp_path / "a-file"
    target.write_text("mine\n")
    w = tiny_world
    values = {"dump": w["world"] / "dumps", "vocab": w["vocab"], "plan": w["plan"], "shards": w["world"] / "images",
              "down": w["world"] / "downstream", "ckpt": tiny_pretrained["run_dir"],
              "manifest": w["world"] / "groups" / "manifest.csv", "out": target}
    args = [a.format(**values) for a in OUT_COMMANDS[command]]
    one_line_error(cli(*args), str(target), "is a file, not a directory")
    assert target.read_text() == "mine\n"
