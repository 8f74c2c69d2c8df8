"""Each command as a Python function: its typed config, then load -> compute -> save.

Algorithms stay in the top-level modules; these functions read models and data,
call them, and write output folders atomically. The CLI in ``minitron.cli`` only
parses arguments, calls these and prints.
"""
