"""Task definitions: prompts, target answers, tolerant parsers of model output, and metrics.

One module per task, each built from plain labelled values (numbers and arrays):

- ``depth``: metric depth of a pixel named by text coordinates;
- ``pose``: relative camera pose of an image pair (distance, direction, yaw/pitch/roll);
- ``correspondence``: the pixel of image 2 matching a pixel of image 1;
- ``object3d``: SpatialRGPT-Bench style object questions with regions named by boxes;
- ``common``: answer spans, numbers with length units, chat turns.
"""
