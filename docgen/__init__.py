"""The docs site's references, generated from the code so they cannot drift: the settings
from the pydantic model (with the descriptions of settings.example.json), the commands from
the argparse parsers, the HTTP API from the OpenAPI document. `hooks.py` puts them into the
pages when `mkdocs build` renders them."""
