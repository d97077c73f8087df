"""The examples in the package's docstrings run and show what they say: documentation that cannot go stale."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import model
import phasegpt_ckpt


def modules_with_examples() -> list[str]:
    names = [info.name for package in (phasegpt_ckpt, model)
             for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")]
    finder = doctest.DocTestFinder()
    return [name for name in names if name != "phasegpt_ckpt.__main__"
            and any(not example.options.get(doctest.SKIP)  # examples that need a real checkpoint are skipped
                    for test in finder.find(importlib.import_module(name)) for example in test.examples)]


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
