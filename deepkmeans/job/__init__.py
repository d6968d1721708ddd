"""A run of the tool: its stages (``stages``), the main job that chains them into a run folder (``run``, whose
files and metrics ``deepkmeans.results`` defines) and the command line's verbs on files (``commands``)."""
