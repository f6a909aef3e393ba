"""Command-line tools that show what the library does (``python -m jaxsemiseg.tools.<name>``)."""
