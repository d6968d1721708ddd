"""A run of the tool: its stages (``stages``), the main job that chains them into a run folder (``run``), that
folder's files and typed metrics (``results``), and the command line's verbs on files (``commands``)."""
