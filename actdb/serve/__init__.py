"""`actdb serve`: a neuron explorer in the browser over one or more stores (docs/explorer.md).

pages.py computes each page's data from the store's views and masks, app.py serves it as
HTML (templates/, static/) and as JSON under /api/, probe.py runs typed text through the
store's model. Needs the optional extra `serve` (starlette, uvicorn, jinja2).
"""
