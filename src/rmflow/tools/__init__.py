"""Diagnostics run from the command line (`python -m rmflow.tools.<name>`); they sit above the tasks and the
training code and may use both."""
