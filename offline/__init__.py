"""Offline tools: the pipeline that regenerates metadata/, the benchmark, the zip builder and the
set-up of pretrained/."""
