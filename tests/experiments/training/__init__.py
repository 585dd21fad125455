"""Tests of experiments/training/: the shared loop and the translation rows end to end."""
