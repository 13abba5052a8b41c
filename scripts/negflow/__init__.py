"""negflow: hard-negative mining for text-embedding training, as a Snakemake workflow."""

__version__ = "0.1.0"
