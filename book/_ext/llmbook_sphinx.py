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


def number_exercises_per_page(app, env):
    """Number the exercises of every page from 1: Chapter 2's first exercise is Exercise 1, not Exercise 6.

    sphinx-exercise numbers exercises with Sphinx's figure numbering (numfig), whose counter runs across the whole
    book. No setting makes it count per page: a numbered toctree restarts it per chapter, but as "Exercise 2.1", and
    numbers the chapter titles too, which already say "Chapter 2". So once Sphinx has assigned its numbers (this
    runs after its own env-get-updated handler), each page's exercises are renumbered 1, 2, ... in the order Sphinx
    numbered them, which is the order of the page. Exercise titles, the titles of their solutions ("Solution to
    Exercise 1") and references to them all read the number from env.toc_fignumbers, so they agree. A reference
    from another page would also say "Exercise 1": name the page in such a reference.
    """
    for fignumbers in env.toc_fignumbers.values():
        if "exercise" in fignumbers:
            exercises = fignumbers["exercise"]  # node id -> number tuple, e.g. (6,)
            in_page_order = sorted(exercises, key=exercises.__getitem__)
            fignumbers["exercise"] = {node_id: (i,) for i, node_id in enumerate(in_page_order, start=1)}
    # Nothing more to rewrite: a page's numbers change here only when the page itself changed, and is rewritten.
    return []


def setup(app):
    # Early: html-page-context stops at the first handler that returns a template, so late handlers may never run.
    app.connect("html-page-context", dedupe_scripts, priority=100)
    # Late: after Sphinx's TocTreeCollector has assigned the book-wide figure numbers (default priority 500).
    app.connect("env-get-updated", number_exercises_per_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
