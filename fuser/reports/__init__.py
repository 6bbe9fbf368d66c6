"""Tables, plots, number formatting and report pages: what fuser shows a person."""
