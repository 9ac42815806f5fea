"""vlm3: vision language models as native 3D learners.

Data flows one way: adapter -> records -> focal unification -> task samples -> mixture ->
trainer / evaluator. See README.md for the conventions (pixels, depth, poses).
"""

__version__ = "0.1.0"
