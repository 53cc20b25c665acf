"""`python -m gpupool` runs the command line."""

from gpupool.cli.main import app

app()
