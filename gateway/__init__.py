"""The edge: settings, `create_app()`, middleware, HTTP routes and the `portcullis` command."""
