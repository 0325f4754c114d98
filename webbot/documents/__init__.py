"""Documents people attach: which files are read, their text (in a limited child process) and its passages."""
