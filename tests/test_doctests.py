"""Every numpydoc Examples section in the package runs as a doctest."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import ctengine


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(ctengine.__path__, "ctengine."):
        module = importlib.import_module(info.name)
        examples = [e for t in doctest.DocTestFinder().find(module) for e in t.examples]
        if any(not e.options.get(doctest.SKIP) for e in examples):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_kernels_document_themselves():
    assert {"ctengine.kernels.lung", "ctengine.kernels.selection", "ctengine.kernels.stats",
            "ctengine.kernels.normalization", "ctengine.kernels._validate"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(importlib.import_module(name)):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples fail in {name}"
