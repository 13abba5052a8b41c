"""negflow: hard-negative mining for text-embedding training, as a Snakemake workflow."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`negflow.mine_hard_negatives`, imported on first use: the stage scripts import this package too, and
    need none of the command's modules."""
    if name == "mine_hard_negatives":
        from negflow.dropin import mine_hard_negatives

        return mine_hard_negatives
    raise AttributeError(f"module 'negflow' has no attribute {name!r}")
