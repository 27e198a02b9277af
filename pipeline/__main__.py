"""Entry point: `python -m pipeline ...` (see pipeline/cli/__init__.py)."""
from pipeline.cli import app

if __name__ == "__main__":
    app()
