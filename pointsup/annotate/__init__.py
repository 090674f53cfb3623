"""Point-label annotation tool: collect P_N labels in a browser (paper sec. 3.1, appendix A).

    python -m pointsup.annotate --input boxes.json --images DIR --output labels.json
    python -m pointsup.annotate.summary labels.json

`job` holds the sampled points, labels and timing and saves them; `views` cuts the two
views of a point out of the image; `server` is the local HTTP server; `static/` the page.
"""
