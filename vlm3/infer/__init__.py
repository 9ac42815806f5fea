"""Inference on your own images: ``vlm3.infer.predict`` (library) and ``vlm3 predict`` (``vlm3.infer.cli``).

Every prediction is a :class:`~vlm3.tasks.samples.Sample` of the user's images asked through
:func:`vlm3.ask.ask`, so prompts, view transform and parsers are those of training and evaluation.
"""
