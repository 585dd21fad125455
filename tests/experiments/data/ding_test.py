"""Tests of experiments/data/ding.py: annotations, line parsing and the sentence pairs of a Ding file."""

from __future__ import annotations

import pytest

from experiments import data
from tests.experiments.data.fixtures import write_ding


class TestDing:

    def test_strip_annotations(self):
        assert data.strip_annotations("Hund {m} [ugs.] (Tier)") == "Hund"
        assert data.strip_annotations("Das ist (eine (sehr) alte) Geschichte.") == "Das ist Geschichte."
        assert data.strip_annotations("petrol (a)round here") == "petrol round here"
        assert data.strip_annotations("(kleine) Rampe").strip() == "Rampe"

    def test_parse_line_aligns_sub_entries_and_takes_first_synonym(self):
        line = "Hund {m}; Köter {m} [ugs.] | Hunde {pl} :: dog; hound [coll.] | dogs"
        assert data.parse_ding_line(line) == [("Hund", "dog"), ("Hunde", "dogs")]

    def test_parse_line_skips_headers_and_mismatched_counts(self):
        assert data.parse_ding_line("# Version :: devel 2023-01-30") == []
        assert data.parse_ding_line("Sie lacht. | Sie lachen laut und lange. :: She laughs.") == []
        assert data.parse_ding_line("no separator here") == []

    def test_load_ding_sentence_rule_and_dedupe(self, tmp_path):
        pairs = data.load_ding(write_ding(tmp_path / "de-en"))
        assert pairs == [
            ("Wir richten uns ganz nach Ihnen.", "We'll fit in with you."),
            ("Sag mir, was du willst.", "Tell me what you want."),
            ("Der Bus hielt an, um zu tanken.", "The bus stopped for fuel/petrol."),
            ("Wo kann man hier tanken?", "Where can we get petrol here?"),
            ("Er kam nach Hause.", "He came back home."),
            ("Ich gehe jetzt nach Hause.", "I am going home now."),
            ("Es regnet heute sehr stark!", "It is raining very hard today!"),
        ]
        # Dropped: words (Hund), < 4 words (Drei Wörter nur.; "That is an old story."), no final
        # punctuation (Vier Wörter sind hier), mismatched sub-entry counts (Sie lacht.), duplicates.

    def test_missing_file(self, tmp_path):
        with pytest.raises(data.DataError, match="does not exist"):
            data.load_ding(tmp_path / "nope")
