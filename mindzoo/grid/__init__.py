"""Evaluation grids: runs (or train configs) x stores x subjects x backends, one job per cell.

``spec`` reads and checks a grid file and plans its train tasks and cells, ``jobs`` holds the
functions a job runs (train one config, score one cell), ``run`` drives a grid through an
executor (local pool or Slurm) and skips what is finished, ``results`` gathers the table and
figures and estimates what is left.
"""
