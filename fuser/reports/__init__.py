"""Tables, plots, number formatting and report pages: what fuser shows a person.

Commands parse options and call these; each takes plain data (a report dict, a plan's
``to_dict()``) so the terminal, the page and ``--json`` show the same numbers.

  text, format, names, hardware   safe model text for rich, number formats, op display names,
                                  CPU name / vector width / library versions
  tables, fusion, pruning, blocks the terminal tables of info/optimize/zoo, fuse, prune, blocks
  plots                           matplotlib: buffer sweep, group roofline, Lavin's roofline,
                                  efficiency gap and waterline (PNG or inline SVG)
  model_report, summary           the data of ``fuser report`` and its before -> after summary
  dag, html, trace                the graph via Graphviz, the self-contained page, the Chrome trace
"""
