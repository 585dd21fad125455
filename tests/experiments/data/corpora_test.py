"""Tests of experiments/data/corpora.py: get_pairs on unpacked fixture packages, and its pair cache."""

from __future__ import annotations

import pytest

from experiments import data
from tests.experiments.data.fixtures import EXPECTED_GEN
from tests.experiments.data.fixtures import EXPECTED_JOHN
from tests.experiments.data.fixtures import write_bible
from tests.experiments.data.fixtures import write_ding


class TestGetPairs:

    @pytest.fixture(autouse=True)
    def _tools(self, monkeypatch):
        monkeypatch.setattr(data.download.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def test_get_pairs_caches_parsed_pairs(self, tmp_path, monkeypatch):
        write_ding(tmp_path / "trans-de-en" / "extracted" / data.DING_FILE)
        monkeypatch.setattr(data.download.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
        first = data.get_pairs("ding_de_en", tmp_path)
        assert len(first) == 7 and list(tmp_path.glob("ding_de_en.pairs.v*.tsv"))
        monkeypatch.setattr(data.ding, "load_ding", lambda path: pytest.fail("pairs should come from the cache"))
        assert data.get_pairs("ding_de_en", tmp_path) == first

    def test_get_pairs_bible(self, tmp_path, monkeypatch):
        base = data.SWORD_ZTEXT_DIR
        write_bible(tmp_path / "sword")
        for package, module in (("sword-text-kjv", "engKJV2006eb"), ("sword-text-sparv", "spaRV1909eb")):
            target = tmp_path / package / "extracted" / base / module
            target.parent.mkdir(parents=True)
            (tmp_path / "sword" / module).rename(target)
        pairs = data.get_pairs("bible_en_es", tmp_path)
        assert pairs[0] == EXPECTED_GEN[0] and pairs[-1] == EXPECTED_JOHN
