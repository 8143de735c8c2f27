"""Shared test fixtures. Reference files live in ../shared/ beside the checkout
(or $QLLAMA_SHARED); tests that need them skip with the reason when absent."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QLLAMA_SHARED", ROOT.parent / "shared"))


def shared_file(*parts) -> Path:
    """Path of a reference file under shared/, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (set QLLAMA_SHARED to the shared/ folder)")
    return path


def golden(name: str) -> Path:
    return shared_file("golden", name)


def data(name: str) -> Path:
    return shared_file("data", name)


def models(name: str) -> Path:
    return shared_file("models", name)


def hf(name: str) -> Path:
    """A Hugging Face reference folder or file under shared/hf/ (see its README)."""
    return shared_file("hf", name)


def llama_cpp_tool(name: str, why: str) -> str:
    """Path of a llama.cpp binary in $QLLAMA_LLAMA_CPP (a build's bin folder), or skip the
    test saying what it would have checked (`why`)."""
    folder = os.environ.get("QLLAMA_LLAMA_CPP", "")
    path = os.path.join(folder, name)
    if not folder or not os.access(path, os.X_OK):
        pytest.skip(f"set QLLAMA_LLAMA_CPP to a llama.cpp build's bin folder (with {name}) "
                    f"to {why}")
    return path
