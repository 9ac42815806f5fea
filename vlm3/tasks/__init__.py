"""Tasks: prompts, target answers, tolerant parsers of model output, metrics and reports.

One module per task, each ending in one registered :class:`~vlm3.tasks.base.Task` object:

- ``depth``: metric depth of a pixel named by text coordinates;
- ``pose``: relative camera pose of an image pair (distance, direction, yaw/pitch/roll);
- ``correspondence``: the pixel of image 2 matching a pixel of image 1;
- ``object3d``: SpatialRGPT-Bench style object questions with regions named by boxes.

``base`` holds the Task interface and the registry (:func:`get_task`), ``samples`` turns records
into samples for any task, ``common`` has answer spans, numbers with length units and chat turns.
"""

from vlm3.tasks.base import Query, Task, UnknownTask, get_task, register, task_names, tasks_of, unregister
from vlm3.tasks import depth, pose, correspondence, object3d  # noqa: F401, I001  (registers the tasks, in this order)

__all__ = ["Query", "Task", "UnknownTask", "get_task", "register", "task_names", "tasks_of", "unregister"]
