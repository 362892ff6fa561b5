import re

import pytest

from piccolo_embed.cli import main


@pytest.mark.slow
def test_demo_with_starter_ranks_paraphrases_first(capsys):
    assert main(["demo", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    hits, total = map(int, re.search(r"(\d+)/(\d+) paraphrase queries", out).groups())
    assert total == 8
    assert hits >= 7, out
