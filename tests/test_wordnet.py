"""WordNet provisioning: Debian's files + the lexnames table give nltk a WordNet 3.0 that is the
same database; a missing WordNet is a one-line error; prep/ never imports torch."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from swagcli import wordnet as W
from swagcli.errors import SwagError


def test_lexnames_table_matches_the_manual():
    assert len(W.LEXNAMES) == 45
    lines = W.lexnames_text().splitlines()
    assert lines[0] == "00\tadj.all\t3" and lines[17] == "17\tnoun.object\t1" and lines[44] == "44\tadj.ppl\t3"


@pytest.mark.skipif(not all((W.Path(W.DEBIAN_DIR) / f).is_file() for f in W.DEBIAN_FILES),
                    reason="Debian's wordnet-base/wordnet-sense-index not installed")
def test_assembled_from_debian_is_wordnet_30(tmp_path, wn):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    dest = W.assemble_from_debian(tmp_path / "corpora" / "wordnet")
    nltk.data.path.append(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deb = WordNetCorpusReader(str(dest), None)
    assert deb.get_version() == "3.0"
    for word in ["eggplant", "crane", "brown_bear", "hedgehog", "dogs", "geese"]:
        assert [(s.name(), s.lexname()) for s in deb.synsets(word)] == \
               [(s.name(), s.lexname()) for s in wn.synsets(word)]
    assert deb.synset("crane.n.05").lexname() == "noun.animal"
    assert W.wnid_of(W.synset_from_wnid("n01440764")) == "n01440764"  # tench


def test_missing_wordnet_is_a_clear_error(tmp_path):
    with pytest.raises(SwagError, match="WordNet not found.*wordnet-base"):
        W.assemble_from_debian(tmp_path / "wn", source=tmp_path / "empty")
    with pytest.raises(SwagError, match="not a WordNet id"):
        W.synset_from_wnid("dog")


def test_prep_never_imports_torch():
    code = ("import sys, swagcli.prep.vocab, swagcli.prep.dumps, swagcli.prep.canon, "
            "swagcli.prep.synth, swagcli.cli; assert 'torch' not in sys.modules, 'torch imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_version_read_off_the_file_is_the_readers(wn):
    """wordnet_info reads the version off data.adj (no reader to build); nltk's reader agrees."""
    assert W.wordnet_info()["version"] == wn.get_version() == "3.0"
