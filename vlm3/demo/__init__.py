"""The end-to-end CPU demo (``vlm3 demo``): see ``run.py``."""
