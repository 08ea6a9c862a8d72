"""Training: the one training loop (``loop``), the supernet search run an epoch at a time
(``search``), checkpoints written atomically (``checkpoint``) and data parallelism
(``distributed``). Import the submodules directly; this package imports nothing eagerly."""
