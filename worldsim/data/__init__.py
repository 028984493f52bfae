"""Bridge-format data: the action formula, video I/O, annotation loading and training windows."""
