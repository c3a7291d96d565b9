"""Tasks: one package per kind of data. A task registers its config classes and a factory; flow/ never
imports from here."""
from .base import Batch, Task, TaskSpec, build_rmflow, get_task, register_task

__all__ = ["Batch", "Task", "TaskSpec", "build_rmflow", "get_task", "register_task"]
