"""Promotion: moving a TF Serving version label (``stable``) to another model version.

TF Serving (and the stand-in) poll the ``models.config`` file; a label moves when that file
says so. The pieces, each usable alone:

- ``labels``: read a model's labels and rewrite one label's value in the file atomically
  (temp file in the same directory, fsync, ``os.replace``, fsync of the directory);
- ``records``: the promotion history, a bounded JSON list in one storage checkpoint;
- ``policy``: the automatic policy's judgement of a champion-versus-challenger comparison;
- ``promoter``: :class:`~scorebeater.promotion.promoter.Promoter`, which refuses a version the
  model server does not report AVAILABLE, moves the label and records it, and the
  ``scorebeater promote`` command.

TensorFlow is never imported here (the daemon uses this package).
"""
