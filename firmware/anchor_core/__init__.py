# Shared sans-I/O core: runs unchanged on CPython and MicroPython. Imports nothing of the project.
