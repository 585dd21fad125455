"""Tests for experiments/data.py on small fixtures written in the real formats (no network)."""

from __future__ import annotations

import collections
import pathlib
import pickle
import re
import struct
import subprocess
import types
import zlib

from absl import logging as absl_logging
import numpy as np
import pytest

from experiments import data

# ------------------------------------------------------------------------------------------------
# Fixtures: a Ding file and a SWORD zText module pair, written the way the Debian packages hold them.
# ------------------------------------------------------------------------------------------------

DING_TEXT = """\
# Version :: devel 2023-01-30
# Copyright (c) :: Frank Richter
#
Hund {m}; Köter {m} [ugs.] | Hunde {pl} :: dog; hound [coll.] | dogs
Wir richten uns ganz nach Ihnen. | Sag mir, was du willst. :: We'll fit in with you. | Tell me what you want.
tanken {vi} | Der Bus hielt an, um zu tanken. | Wo kann man hier tanken? :: to refuel | \
The bus stopped for fuel/petrol. | Where can we get petrol here?
Er kam (gestern) nach Hause {adv}. :: He came back home  (yesterday) [Br.].
Das ist (eine (sehr) alte) Geschichte. :: That is an old story (of (old) times).
Ich gehe jetzt nach Hause.; Ich geh heim. :: I am going home now.; I'm off home.
Sie lacht. | Sie lachen laut und lange. :: She laughs.
Drei Wörter nur. :: Only three words.
Vier Wörter sind hier :: Four words are here
Wir richten uns ganz nach Ihnen. :: We'll fit in with you.
Es regnet   heute sehr stark! :: It is raining   very hard today!
"""


def write_ding(path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DING_TEXT, encoding="utf-8")
    return path


def write_ztext(module_dir: pathlib.Path, testament: str, entries: dict[int, str], num_records: int,
                records_per_block: int = 3000) -> None:
    """Writes <t>.bzs / .bzz / .bzv: uint32 (offset, csize, usize) triples, zlib blocks, and 10-byte
    (uint32 block, uint32 offset, uint16 size) verse records, all little-endian."""
    module_dir.mkdir(parents=True, exist_ok=True)
    blocks: dict[int, bytearray] = collections.defaultdict(bytearray)
    records = []
    for k in range(num_records):
        text = entries.get(k, "").encode("utf-8")
        number = k // records_per_block
        records.append((number, len(blocks[number]), len(text)))
        blocks[number] += text
    bzs, bzz = bytearray(), bytearray()
    for number in range(max(blocks) + 1):
        raw = bytes(blocks[number])
        packed = zlib.compress(raw)
        bzs += struct.pack("<III", len(bzz), len(packed), len(raw))
        bzz += packed
    (module_dir / f"{testament}.bzs").write_bytes(bytes(bzs))
    (module_dir / f"{testament}.bzz").write_bytes(bytes(bzz))
    (module_dir / f"{testament}.bzv").write_bytes(b"".join(struct.pack("<IIH", *r) for r in records))


# Record indices read off the real engKJV2006eb / spaRV1909eb modules (Debian sword-text-kjv 14.3-1).
OT_RECORDS, NT_RECORDS = 24115, 8246
GEN_1_1, GEN_1_2, GEN_1_3, GEN_2_1, PS_3_1 = 4, 5, 6, 36, 14460
MATT_1_1, JOHN_3_16 = 4, 3068

KJV_HEADERS = {1: '<milestone type="x-importer" subType="x-osis2mod" n="$Rev: 3769 $"/>',
               2: '<div canonical="true" osisID="Gen" sID="gen2" type="book"/> <title type="main">The First Book of '
                  'Moses, called Genesis</title>',
               3: '<chapter n="1" osisID="Gen.1" sID="Gen.1"/> '}
RV_HEADERS = {1: '<milestone type="x-importer" subType="x-osis2mod"/>',
              2: '<div canonical="true" osisID="Gen" sID="gen2" type="book"/> <title type="main">Génesis</title>',
              3: '<chapter n="1" osisID="Gen.1" sID="Gen.1"/>'}
KJV_GEN = {
    GEN_1_1: 'In the <w lemma="strong:H7225">beginning</w> <w lemma="strong:H0430">God</w> created the heaven '
             'and the <w lemma="strong:H0776">earth</w>. ',
    GEN_1_2: '\u00b6 And the earth was without form, and void; and darkness <transChange type="added">was'
             '</transChange> upon the face of the deep.<note placement="foot"><reference type="annotateRef">1.2 '
             '</reference>the deep: Heb. the abyss</note> And the Spirit of God moved upon the face of the waters.',
}  # Gen 1:3 has no entry: a zero-size record.
RV_GEN = {
    GEN_1_1: '<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H1254">crió</w> Dios los cielos y la '
             'tierra. ',
    GEN_1_2: 'Y la tierra estaba desordenada y vacía, y las tinieblas estaban sobre la haz del abismo, y el '
             'Espíritu de Dios se movía sobre la haz de las aguas &amp; <note type="x">nota</note>más.',
    GEN_1_3: '<chapter eID="Gen.1"/>',  # empty once the tags are dropped
}
KJV_NT = {JOHN_3_16: '\u00b6 For God so loved the world, that he gave his only begotten <w>Son</w>, that whosoever '
                     'believeth in him should not perish, but have everlasting life.'}
RV_NT = {JOHN_3_16: 'Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito, para que todo '
                    'aquel que en él cree, no se pierda, mas tenga vida eterna.'}

EXPECTED_GEN = [
    ("In the beginning God created the heaven and the earth.",
     "En el principio crió Dios los cielos y la tierra."),
    ("And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of "
     "God moved upon the face of the waters.",
     "Y la tierra estaba desordenada y vacía, y las tinieblas estaban sobre la haz del abismo, y el Espíritu de "
     "Dios se movía sobre la haz de las aguas & más."),
]
EXPECTED_JOHN = ("For God so loved the world, that he gave his only begotten Son, that whosoever believeth in him "
                 "should not perish, but have everlasting life.",
                 "Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito, para que todo aquel que "
                 "en él cree, no se pierda, mas tenga vida eterna.")

_FILLER = ("and the of unto them he that shall in his for they was with all which said not "
           "be is him were this thee thou upon out from").split()


def _verse_text(tag: str, length: int, rng: np.random.Generator) -> str:
    words = [tag]
    while len(" ".join(words)) < length:
        words.append(str(rng.choice(_FILLER)))
    return " ".join(words) + "."


def jonah_entries() -> tuple[dict[int, str], dict[int, str]]:
    """Jonah as the Reina-Valera module has it: KJV 1:17 is its 2:1, so its chapter 2 is shifted by
    one verse, its 1:17 slot is empty and its 2:10 slot holds two verses."""
    records = {(c, v): k for k, b, c, v in data.kjv_verse_records("ot") if b == "Jonah"}
    rng = np.random.default_rng(7)
    english, spanish = {}, {}
    lengths = {cv: int(rng.integers(30, 250)) for cv in records}
    for (c, v), k in records.items():
        english[k] = _verse_text(f"en{c}x{v}", lengths[(c, v)], rng)

    def es(c: int, v: int) -> str:
        return _verse_text(f"es{c}x{v}", int(lengths[(c, v)] * 0.92), rng)

    for (c, v), k in records.items():
        if c == 1:
            spanish[k] = "" if v == 17 else es(1, v)
        elif c == 2:
            spanish[k] = es(1, 17) if v == 1 else es(2, v - 1) + (" " + es(2, 10) if v == 10 else "")
        else:
            spanish[k] = es(c, v)
    return english, spanish


def write_bible(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    kjv, rv = root / "engKJV2006eb", root / "spaRV1909eb"
    jonah_en, jonah_es = jonah_entries()
    write_ztext(kjv, "ot", {**KJV_HEADERS, **KJV_GEN, **jonah_en}, OT_RECORDS)
    write_ztext(rv, "ot", {**RV_HEADERS, **RV_GEN, **jonah_es}, OT_RECORDS)
    write_ztext(kjv, "nt", {1: KJV_HEADERS[1], **KJV_NT}, NT_RECORDS)
    write_ztext(rv, "nt", {1: RV_HEADERS[1], **RV_NT}, NT_RECORDS)
    return kjv, rv


def synthetic_pairs(n: int, seed: int = 0, max_words: int = 12) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    vocab = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    pairs = []
    for k in range(n):
        length = int(rng.integers(1, max_words + 1))
        src = " ".join(str(w) for w in rng.choice(vocab, length)) + f" s{k}"
        tgt = " ".join(str(w).upper() for w in rng.choice(vocab, length)) + f" T{k}"
        pairs.append((src, tgt))
    return pairs


def make_examples(lengths: list[tuple[int, int]]) -> list[data.Example]:
    return [data.Example(tuple(range(10, 10 + s)), tuple(range(100, 100 + t)), f"s{k}", f"t{k}")
            for k, (s, t) in enumerate(lengths)]


# ------------------------------------------------------------------------------------------------
# Ding
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# SWORD
# ------------------------------------------------------------------------------------------------


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
            assert data._truecase_drop_capital(raw, counts) == want

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

    def test_wrong_versification(self, tmp_path):
        write_ztext(tmp_path / "a", "ot", {}, 100)
        write_ztext(tmp_path / "a", "nt", {}, 100)
        with pytest.raises(data.DataError, match="KJV versification"):
            data.load_sword(tmp_path / "a", tmp_path / "a")

    def test_missing_module(self, tmp_path):
        with pytest.raises(data.DataError, match="does not exist"):
            data.read_ztext(tmp_path, "ot")

    def test_align_by_length(self):
        lengths = [50, 120, 80, 200, 60, 140]
        assert data.align_by_length(lengths, lengths) == [(k, k + 1, k, k + 1) for k in range(6)]
        # The target merges source sentences 1 and 2 and splits sentence 5 in two.
        beads = data.align_by_length(lengths, [50, 200, 200, 60, 70, 70])
        assert beads == [(0, 1, 0, 1), (1, 3, 1, 2), (3, 4, 2, 3), (4, 5, 3, 4), (5, 6, 4, 6)]
        # A close call: by length alone a one-sentence shift fits better; matching keys keep 1-1.
        src, tgt = [98, 39, 44, 45, 53, 139], [137, 44, 45, 53, 42, 97]
        assert data.align_by_length(src, tgt) == [(0, 2, 0, 1), (2, 3, 1, 2), (3, 4, 2, 3), (4, 5, 3, 4),
                                                  (5, 6, 4, 6)]
        keys = list(range(6))
        assert data.align_by_length(src, tgt, src_keys=keys, tgt_keys=keys) == [(k, k + 1, k, k + 1) for k in range(6)]
        assert data.align_by_length([], [3]) == [(0, 0, 0, 1)]
        with pytest.raises(ValueError):
            data.align_by_length([1], [1], src_keys=["a"])


# ------------------------------------------------------------------------------------------------
# Parallel text, packages, get_pairs
# ------------------------------------------------------------------------------------------------


class TestParallelText:

    def test_tsv_and_files(self, tmp_path):
        (tmp_path / "p.tsv").write_text("a  b\tc\n\nd\te\textra\n\t x\n", encoding="utf-8")
        assert data.load_parallel_tsv(tmp_path / "p.tsv") == [("a b", "c"), ("d", "e")]
        (tmp_path / "s.txt").write_text("one\ntwo\n", encoding="utf-8")
        (tmp_path / "t.txt").write_text("eins\nzwei\n", encoding="utf-8")
        pairs = data.get_pairs("", "", f"{tmp_path / 's.txt'},{tmp_path / 't.txt'}")
        assert pairs == [("one", "eins"), ("two", "zwei")]

    def test_missing_data_path_names_path_and_format(self, tmp_path):
        missing = tmp_path / "nope.tsv"
        with pytest.raises(data.DataError) as err:
            data.get_pairs("ding_de_en", tmp_path, str(missing))
        assert str(missing) in str(err.value) and "source<TAB>target" in str(err.value)
        with pytest.raises(data.DataError, match="nope.src"):
            data.get_pairs("", tmp_path, f"{tmp_path / 'nope.src'},{missing}")

    def test_malformed_inputs(self, tmp_path):
        (tmp_path / "bad.tsv").write_text("no tab here\n", encoding="utf-8")
        with pytest.raises(data.DataError, match="line 1 .* has no tab"):
            data.load_parallel_tsv(tmp_path / "bad.tsv")
        (tmp_path / "s").write_text("a\nb\n", encoding="utf-8")
        (tmp_path / "t").write_text("a\n", encoding="utf-8")
        with pytest.raises(data.DataError, match="line-aligned"):
            data.load_parallel_files(tmp_path / "s", tmp_path / "t")
        with pytest.raises(data.DataError, match="unknown corpus 'wmt'"):
            data.get_pairs("wmt", tmp_path)


def _fake_run(calls, *, download_rc=0, stderr=""):
    def run(cmd, cwd=None, capture_output=False, text=False, check=False):
        calls.append(cmd)
        assert capture_output and not check
        if cmd[:2] == ["apt-get", "download"]:
            if download_rc == 0:
                (pathlib.Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"deb")
            return subprocess.CompletedProcess(cmd, download_rc, "", stderr)
        if cmd[:2] == ["dpkg-deb", "-x"]:
            target = pathlib.Path(cmd[3]) / "usr/share/doc"
            target.mkdir(parents=True)
            (target / "README").write_text("x")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        raise AssertionError(cmd)
    return run


class TestObtainPackage:

    @pytest.fixture(autouse=True)
    def _tools(self, monkeypatch):
        monkeypatch.setattr(data.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def test_download_extract_then_cache(self, tmp_path, monkeypatch):
        calls = []
        monkeypatch.setattr(data.subprocess, "run", _fake_run(calls))
        root = data.obtain_debian_package("trans-de-en", tmp_path)
        assert root == tmp_path / "trans-de-en" / "extracted" and (root / "usr/share/doc/README").is_file()
        assert [c[:2] for c in calls] == [["apt-get", "download"], ["dpkg-deb", "-x"]]
        assert data.obtain_debian_package("trans-de-en", tmp_path) == root
        assert len(calls) == 2  # the second call asked nobody

    def test_apt_get_failure_message(self, tmp_path, monkeypatch):
        calls = []
        monkeypatch.setattr(data.subprocess, "run", _fake_run(
            calls, download_rc=100, stderr="Reading package lists...\nE: Unable to locate package trans-de-en\n"))
        with pytest.raises(data.DataError) as err:
            data.obtain_debian_package("trans-de-en", tmp_path)
        message = str(err.value)
        assert "'trans-de-en' could not be downloaded (apt-get: Unable to locate package trans-de-en)" in message
        assert "sudo apt-get update" in message and "--data_path" in message

    def test_missing_tools(self, tmp_path, monkeypatch):
        monkeypatch.setattr(data.shutil, "which", lambda tool: None if tool == "apt-get" else "/usr/bin/x")
        with pytest.raises(data.DataError, match="apt-get is not installed"):
            data.obtain_debian_package("trans-de-en", tmp_path)

    def test_get_pairs_caches_parsed_pairs(self, tmp_path, monkeypatch):
        write_ding(tmp_path / "trans-de-en" / "extracted" / data.DING_FILE)
        monkeypatch.setattr(data.subprocess, "run", lambda *a, **k: pytest.fail("no download expected"))
        first = data.get_pairs("ding_de_en", tmp_path)
        assert len(first) == 7 and list(tmp_path.glob("ding_de_en.pairs.v*.tsv"))
        monkeypatch.setattr(data, "load_ding", lambda path: pytest.fail("pairs should come from the cache"))
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


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------


class TestSplits:

    def test_deterministic_and_sources_never_cross(self):
        pairs = synthetic_pairs(3000)
        # The same source with other targets and other spacing/case must follow its first pair.
        pairs += [(pairs[k][0].upper().replace(" ", "  "), f"other {k}") for k in range(0, 3000, 7)]
        splits = data.split_pairs(pairs, 300, 300)
        assert splits == data.split_pairs(pairs, 300, 300)
        assert sum(len(v) for v in splits.values()) == len(pairs)
        where = {}
        for name, members in splits.items():
            for src, _ in members:
                assert where.setdefault(data.split_key(src), name) == name
        shuffled = data.split_pairs(pairs[::-1], 300, 300)
        assert {k: set(v) for k, v in shuffled.items()} == {k: set(v) for k, v in splits.items()}

    def test_sizes_are_close_to_targets_and_cover_lengths(self):
        pairs = synthetic_pairs(20000, max_words=90)
        splits = data.split_pairs(pairs, 1000, 1000)
        assert 1000 <= len(splits["dev"]) <= 1005 and 1000 <= len(splits["test"]) <= 1005
        test_buckets = collections.Counter(min(data.num_words(s) // 10, 8) for s, _ in splits["test"])
        assert set(test_buckets) == set(range(9))

    def test_bad_sizes(self):
        with pytest.raises(ValueError, match="exceeds"):
            data.split_pairs(synthetic_pairs(10), 6, 6)
        with pytest.raises(ValueError, match=">= 0"):
            data.split_pairs(synthetic_pairs(10), -1, 1)

    def test_subsample(self):
        pairs = synthetic_pairs(100)
        small, large = data.subsample(pairs, 10), data.subsample(pairs, 30)
        assert len(small) == 10 and set(small) <= set(large) and small == data.subsample(pairs, 10)
        assert data.subsample(pairs, 0) == pairs


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_texts():
    return [t for pair in synthetic_pairs(400) for t in pair] + ["Grüße aus Köln, señor!"]


class TestTokenizer:

    def test_round_trip_special_ids_and_quiet(self, tmp_path, tokenizer_texts, capfd):
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.WARNING)  # only SentencePiece's own output is under test
        try:
            capfd.readouterr()
            tok = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 120)
            out, err = capfd.readouterr()
        finally:
            absl_logging.set_verbosity(verbosity)
        assert out == "" and err == ""
        assert tok.vocab_size == 120
        assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
        for text in tokenizer_texts[:50] + ["Grüße aus Köln, señor!"]:
            ids = tok.encode(text)
            assert ids and min(ids) >= 4 and tok.decode(ids) == text
        assert pickle.loads(pickle.dumps(tok)).encode("Grüße aus Köln") == tok.encode("Grüße aus Köln")
        ids = tok.encode("alpha beta")
        assert tok.decode([data.BOS_ID, *ids, data.EOS_ID, *tok.encode("gamma"), data.PAD_ID]) == "alpha beta"

    def test_cached_by_content(self, tmp_path, tokenizer_texts, monkeypatch):
        first = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 100)
        def boom(*args, **kwargs):
            raise AssertionError("should be cached")

        monkeypatch.setattr(data, "_train_sentencepiece", boom)
        again = data.load_or_train_tokenizer(tokenizer_texts, tmp_path, 100)
        assert again.path == first.path and again.encode("alpha zeta") == first.encode("alpha zeta")
        with pytest.raises(AssertionError, match="cached"):
            data.load_or_train_tokenizer(tokenizer_texts[:-1], tmp_path, 100)

    def test_vocab_too_large_falls_back(self, tmp_path):
        tok = data.load_or_train_tokenizer(["tiny text", "more tiny text"], tmp_path, 5000)
        assert 5 <= tok.vocab_size < 5000
        assert tok.decode(tok.encode("tiny text")) == "tiny text"

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="vocab_size"):
            data.load_or_train_tokenizer(["a"], tmp_path, 4)
        with pytest.raises(ValueError, match="no text"):
            data.load_or_train_tokenizer([" "], tmp_path, 100)


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------


class TestBatches:

    def test_shapes_padding_shift_and_fillers(self):
        examples = make_examples([(3, 2), (5, 6), (1, 1)])
        (batch,) = list(data.batches(examples, 4, (4, 8), shuffle=False, seed=0, epoch=0))
        assert batch["src"].shape == (4, 8) and batch["tgt_in"].shape == (4, 8)
        for key, dtype in (("src", np.int32), ("src_lengths", np.int32), ("tgt_in", np.int32),
                           ("tgt_out", np.int32), ("tgt_mask", np.float32), ("index", np.int32)):
            assert batch[key].dtype == dtype, key
        rows = {int(k): r for r, k in enumerate(batch["index"]) if k >= 0}
        assert sorted(rows) == [0, 1, 2]
        r = rows[0]
        np.testing.assert_array_equal(batch["src"][r], [10, 11, 12, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_in"][r], [data.BOS_ID, 100, 101, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_out"][r], [100, 101, data.EOS_ID, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(batch["tgt_mask"][r], [1, 1, 1, 0, 0, 0, 0, 0])
        assert batch["src_lengths"][r] == 3
        filler = [r for r, k in enumerate(batch["index"]) if k < 0]
        assert len(filler) == 1
        f = filler[0]
        assert batch["src_lengths"][f] == 0 and not batch["src"][f].any() and not batch["tgt_mask"][f].any()
        assert not batch["tgt_in"][f].any() and not batch["tgt_out"][f].any()

    def test_bucket_boundaries(self):
        buckets = (4, 8, 16)
        for s, t, want in [(4, 3, (4, 4)), (5, 3, (8, 4)), (2, 4, (4, 8)), (16, 15, (16, 16)),
                           (17, 1, (32, 4)), (40, 40, (48, 48))]:
            (batch,) = list(data.batches(make_examples([(s, t)]), 2, buckets, shuffle=False, seed=0, epoch=0))
            assert (batch["src"].shape[1], batch["tgt_in"].shape[1]) == want, (s, t)

    def test_every_example_once_few_shapes_only_last_batch_filled(self):
        rng = np.random.default_rng(0)
        examples = make_examples([(int(rng.integers(1, 30)), int(rng.integers(1, 30))) for _ in range(203)])
        got = list(data.batches(examples, 16, (8, 16, 32), shuffle=True, seed=3, epoch=1))
        assert len(got) == 13
        index = np.concatenate([b["index"] for b in got])
        assert sorted(index[index >= 0].tolist()) == list(range(203)) and (index < 0).sum() == 13 * 16 - 203
        assert sum(bool((b["index"] < 0).any()) for b in got) == 1
        assert {b["src"].shape[1] for b in got} <= {8, 16, 32}
        for b in got:
            assert b["src"].shape[0] == 16
            for row, k in enumerate(b["index"]):
                if k >= 0:
                    assert b["src_lengths"][row] == len(examples[k].src_ids)
                    assert b["tgt_mask"][row].sum() == len(examples[k].tgt_ids) + 1

    def test_bucketing_groups_similar_lengths(self):
        examples = make_examples([(2, 2)] * 32 + [(30, 30)] * 32)
        for b in data.batches(examples, 16, (4, 32), shuffle=True, seed=0, epoch=0):
            assert b["src"].shape[1] == (4 if b["index"].max() < 32 else 32)

    def test_batch_order_is_shuffled(self):
        examples = make_examples([(2, 2)] * 64 + [(30, 30)] * 64)
        widths = [b["src"].shape[1] for b in data.batches(examples, 8, (4, 32), shuffle=True, seed=0, epoch=0)]
        assert sorted(widths) == [4] * 8 + [32] * 8 and widths != sorted(widths)
        widths = [b["src"].shape[1] for b in data.batches(examples, 8, (4, 32), shuffle=False, seed=0, epoch=0)]
        assert widths == sorted(widths)

    def test_determinism(self):
        examples = make_examples([(k % 13 + 1, k % 7 + 1) for k in range(100)])

        def order(**kw):
            return [b["index"].tolist() for b in data.batches(examples, 8, (4, 8, 16), **kw)]

        assert order(shuffle=True, seed=1, epoch=2) == order(shuffle=True, seed=1, epoch=2)
        assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=1, epoch=3)
        assert order(shuffle=True, seed=1, epoch=2) != order(shuffle=True, seed=2, epoch=2)
        assert order(shuffle=False, seed=0, epoch=0) == order(shuffle=False, seed=5, epoch=9)

    def test_bad_arguments(self):
        examples = make_examples([(1, 1)])
        with pytest.raises(ValueError, match="batch_size"):
            list(data.batches(examples, 0, (4,), shuffle=False, seed=0, epoch=0))
        with pytest.raises(ValueError, match="increasing"):
            list(data.batches(examples, 2, (8, 4), shuffle=False, seed=0, epoch=0))
        assert not list(data.batches([], 2, (4,), shuffle=False, seed=0, epoch=0))


# ------------------------------------------------------------------------------------------------
# prepare
# ------------------------------------------------------------------------------------------------


def _config(**overrides):
    fields = dict(corpus="ding_de_en", data_dir="", data_path="", max_words=10, vocab_size=80, dev_size=40,
                  test_size=40, max_train=0, buckets=(8, 16))
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


class TestPrepare:

    def test_prepare_from_tsv(self, tmp_path):
        pairs = synthetic_pairs(600, max_words=14)
        data.write_parallel_tsv(pairs, tmp_path / "p.tsv")
        config = _config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv"))
        ds = data.prepare(config, tmp_path / "tok")
        kept = [p for p in pairs if data.num_words(p[0]) <= 10 and data.num_words(p[1]) <= 10]
        assert ds.info["pairs"] == 600 and ds.info["pairs_within_max_words"] == len(kept)
        assert sum(ds.info["split_pairs"].values()) == len(kept)
        assert len(ds.dev) == ds.info["split_pairs"]["dev"] and len(ds.test) == ds.info["split_pairs"]["test"]
        assert ds.tokenizer.vocab_size == 80 and list((tmp_path / "tok").glob("spm_bpe_80_*.model"))
        assert all(len(e.src_ids) <= 16 and len(e.tgt_ids) + 1 <= 16 for e in ds.train)
        for ex in ds.train[:20] + ds.test[:20]:
            assert ds.tokenizer.decode(ex.tgt_ids) == ex.tgt_text and (ex.src_text, ex.tgt_text) in kept
        train_sources = {data.split_key(e.src_text) for e in ds.train}
        assert not train_sources & {data.split_key(e.src_text) for e in ds.test}
        again = data.prepare(config, tmp_path / "tok")
        assert again.train == ds.train and again.tokenizer.path == ds.tokenizer.path

    def test_max_train_and_dict_config(self, tmp_path):
        data.write_parallel_tsv(synthetic_pairs(300), tmp_path / "p.tsv")
        config = vars(_config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv"), max_train=50,
                              dev_size=20, test_size=20, max_words=0, buckets=(64,)))
        ds = data.prepare(config)
        assert len(ds.train) == 50 and ds.tokenizer.path.parent == tmp_path / "tokenizers"

    def test_prepare_ding_fixture(self, tmp_path):
        write_ding(tmp_path / "trans-de-en" / "extracted" / data.DING_FILE)
        ds = data.prepare(_config(data_dir=str(tmp_path), dev_size=1, test_size=1, vocab_size=60, buckets=(64,)),
                          tmp_path)
        assert len(ds.train) + len(ds.dev) + len(ds.test) == 7 and ds.info["source"] == "ding_de_en"

    def test_errors(self, tmp_path):
        with pytest.raises(data.DataError, match="nope.tsv"):
            data.prepare(_config(data_path=str(tmp_path / "nope.tsv")))
        data.write_parallel_tsv(synthetic_pairs(30), tmp_path / "p.tsv")
        with pytest.raises(data.DataError, match="too few"):
            data.prepare(_config(data_dir=str(tmp_path), data_path=str(tmp_path / "p.tsv")))
