"""mnist-dist: MNIST-family classifiers trained with Accelerate, from a laptop CPU to SLURM clusters."""

from __future__ import annotations


def _version() -> str:
    """The installed distribution's version; in a checkout that was never installed, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("mnist-dist")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = (
            re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M)
            if pyproject.is_file()
            else None
        )
        return found.group(1) if found else "0+unknown"


def __getattr__(name: str):
    # Looked up on first use, not at import: every training process imports the package (start-up is measured).
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
