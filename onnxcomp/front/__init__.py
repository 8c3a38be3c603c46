"""Front layer: the command line (``cli``) and the HTML report. Imports the pipeline layer and below, never the reverse."""
