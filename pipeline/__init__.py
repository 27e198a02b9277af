"""Caption-curation studio: the pipeline package (sources, teacher, export, student, evaluation)."""

__version__ = "0.1.0"
