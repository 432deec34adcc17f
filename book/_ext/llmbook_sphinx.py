"""Small Sphinx fixes for the book, loaded through `local_extensions` in _config.yml."""


def dedupe_scripts(app, pagename, templatename, context, doctree):
    """Emit each script at most once per page.

    sphinx-thebe registers its inline configuration (`const THEBE_JS_URL = ...`) whenever documents are read, and
    sphinxcontrib-bibtex makes Sphinx read twice; the second `const` then throws in the browser. An inline script is
    registered once with the file name None and once with '', so scripts are compared by body, not by that name.
    """
    scripts, seen = [], set()
    for script in context.get("script_files", []):
        key = (script.filename or "", tuple(sorted(script.attributes.items())))  # None and "" both mean inline
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"][:] = scripts  # in place: Sphinx sorts this list by priority afterwards


def setup(app):
    # Early: html-page-context stops at the first handler that returns a template, so late handlers may never run.
    app.connect("html-page-context", dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
