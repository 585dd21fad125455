"""Tests of experiments/data/sword.py: KJV versification, the zText reader, OSIS text and verse pairs."""

from __future__ import annotations

import re

import pytest

from experiments import data
from tests.experiments.data.fixtures import EXPECTED_GEN
from tests.experiments.data.fixtures import EXPECTED_JOHN
from tests.experiments.data.fixtures import GEN_1_1
from tests.experiments.data.fixtures import GEN_2_1
from tests.experiments.data.fixtures import JOHN_3_16
from tests.experiments.data.fixtures import MATT_1_1
from tests.experiments.data.fixtures import NT_RECORDS
from tests.experiments.data.fixtures import OT_RECORDS
from tests.experiments.data.fixtures import PS_3_1
from tests.experiments.data.fixtures import write_bible
from tests.experiments.data.fixtures import write_ztext


class TestSword:

    def test_versification_layout(self):
        ot, nt = data.kjv_verse_records("ot"), data.kjv_verse_records("nt")
        assert (len(ot), len(nt)) == (23145, 7957)
        assert (data.kjv_num_records("ot"), data.kjv_num_records("nt")) == (OT_RECORDS, NT_RECORDS)
        where = {(b, c, v): k for k, b, c, v in ot}
        assert where[("Gen", 1, 1)] == GEN_1_1 and where[("Gen", 2, 1)] == GEN_2_1
        assert where[("Ps", 3, 1)] == PS_3_1 and where[("Mal", 4, 6)] == OT_RECORDS - 1
        where_nt = {(b, c, v): k for k, b, c, v in nt}
        assert where_nt[("Matt", 1, 1)] == MATT_1_1 and where_nt[("John", 3, 16)] == JOHN_3_16
        with pytest.raises(ValueError, match="testament"):
            data.kjv_verse_records("apocrypha")

    def test_osis_to_text(self):
        osis = ('<div type="x-milestone" sID="pv1"/><title canonical="true" type="psalm">A <w>Psalm</w> of David.'
                '</title> <lg sID="a"/><l level="1" sID="b"/>\u00b6 LORD, how are they<note n="a">Heb. many</note> '
                'increased!<l eID="b"/><l sID="c"/>Many rise repartiéron<transChange type="added">lo</transChange>.')
        assert data.osis_to_text(osis) == "A Psalm of David. LORD, how are they increased! Many rise repartiéronlo."
        assert data.osis_to_text('<chapter eID="Gen.1"/> <div eID="x" type="x-p"/>') == ""

    def test_truecase_chapter_opening(self):
        counts = {"en": 5, "fueron": 3, "Jehová": 9}
        for raw, want in [("EN el principio", "En el principio"), ("Y FUERON acabados", "Y fueron acabados"),
                          ("Y JEHOVÁ dijo", "Y Jehová dijo"), ("Salmo de David. ALEGRARÁSE el rey",
                                                                 "Salmo de David. Alegraráse el rey"),
                          ("¿QUIÉN es", "¿Quién es"), ("es1x1 nada", "es1x1 nada")]:
            assert data.sword._truecase_drop_capital(raw, counts) == want

    def test_read_ztext_round_trip(self, tmp_path):
        entries = {0: "", 1: "first", 5: "<w>fünf</w>", 6: ""}
        write_ztext(tmp_path / "m", "nt", entries, 9, records_per_block=4)
        assert data.read_ztext(tmp_path / "m", "nt") == ["", "first", "", "", "", "<w>fünf</w>", "", "", ""]

    def test_load_sword_fixture(self, tmp_path):
        kjv, rv = write_bible(tmp_path)
        pairs = data.load_sword(kjv, rv)
        assert pairs[:2] == EXPECTED_GEN  # Gen 1:3 is dropped: both sides are empty
        assert pairs[-1] == EXPECTED_JOHN
        joined = " ".join(e + " " + s for e, s in pairs)
        for absent in ("Moses, called Genesis", "Génesis", "abyss", "nota", "<", "\u00b6"):
            assert absent not in joined

    def test_load_sword_realigns_shifted_chapter(self, tmp_path):
        pairs = data.load_sword(*write_bible(tmp_path))
        jonah = pairs[2:-1]
        assert len(jonah) == 47  # 48 verses; 2:9 and 2:10 come out joined against one Spanish slot
        for en, es in jonah:
            assert re.findall(r"en(\d+x\d+)", en) == re.findall(r"es(\d+x\d+)", es), (en, es)
        assert [re.findall(r"en(\d+x\d+)", en) for en, _ in jonah[16:18]] == [["1x17"], ["2x1"]]

    def test_kjv_verses_references_and_order(self, tmp_path):
        kjv, _ = write_bible(tmp_path)
        verses = data.kjv_verses(kjv)
        assert [(b, c, v) for b, c, v, _ in verses[:2]] == [("Gen", 1, 1), ("Gen", 1, 2)]  # 1:3 is empty
        assert verses[0][3] == EXPECTED_GEN[0][0] and verses[-1][:3] == ("John", 3, 16)
        assert verses[-1][3] == EXPECTED_JOHN[0]
        jonah = [(c, v) for b, c, v, _ in verses if b == "Jonah"]
        assert jonah == sorted(jonah) and len(jonah) == 48
        assert all(text and "<" not in text for *_, text in verses)

    def test_wrong_versification(self, tmp_path):
        write_ztext(tmp_path / "a", "ot", {}, 100)
        write_ztext(tmp_path / "a", "nt", {}, 100)
        with pytest.raises(data.DataError, match="KJV versification"):
            data.load_sword(tmp_path / "a", tmp_path / "a")
        with pytest.raises(data.DataError, match="KJV versification"):
            data.kjv_verses(tmp_path / "a")

    def test_missing_module(self, tmp_path):
        with pytest.raises(data.DataError, match="does not exist"):
            data.read_ztext(tmp_path, "ot")
