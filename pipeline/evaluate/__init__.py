"""Evaluation on labelled benchmarks: reading the files (`datasets`), scoring flags against
their labels (`scoring`) and an in-memory replay through the stages (`offline`)."""
