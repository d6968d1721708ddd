"""Every file the tool writes or reads back: atomic writes (``atomic``), training checkpoints (``checkpoints``)
and models saved as compressed files or checkpoints (``models``)."""
