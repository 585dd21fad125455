"""Data fixtures in the real formats (no network): a Ding file, SWORD zText modules, synthetic pairs."""

from __future__ import annotations

import collections
import pathlib
import struct
import zlib

import numpy as np

from experiments import data

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
