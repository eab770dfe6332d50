"""`python -m openprofile` is the `openprofile` command."""

from openprofile.cli.main import app

app()
