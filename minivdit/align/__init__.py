"""Representation alignment: heads and losses (``heads.py``, ``losses.py``), frozen teachers (``teachers.py``)
and encoder diagnostics (``analysis.py``). ``train.train_step`` taps the DiT at ``AlignConfig.block_index``,
runs the teacher on the clean video (or reads cached features) and adds ``weight · head(hidden, feats)``."""
