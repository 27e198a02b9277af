"""The student: Phi-3-mini that captions 32x32 images through a trained patch projector.

Public entry points: `train` (train.py), `load_student` (loader.py), `generate_captions` and
`stream_caption` (generate.py), `evaluate` (evaluate.py); CLI commands in commands.py.
"""
